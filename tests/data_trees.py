"""Small trees in the layouts of the three real datasets, drawn by the tests.

Photos are synthetic faces (non-square, so the loader's centred crop is exercised); the
caption text is the real-caption sample shipped in tgfr/data/assets.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tgfr.data import load_real_captions, render_face, sample_identity, sample_variation
from tgfr.data.readers import CELEBA_DIALOG_LEVELS

LAYOUTS = ("mmcelebahq", "face2text", "celeba-dialog")
WIDTH, HEIGHT = 40, 48
LEVEL_CAPTIONS = {"Bangs": "Bangs cover {} fifths of the forehead.", "Eyeglasses": "Eyeglasses of kind {}.",
                  "No_Beard": "A beard of length {}.", "Smiling": "A smile of width {}.", "Young": "An age of {}."}


def _levels(identity: int, photo: int) -> dict[str, int]:
    """CelebA-Dialog levels 0-5: one set per person, and each later photo with one attribute moved."""
    levels = dict(zip(CELEBA_DIALOG_LEVELS, np.random.default_rng([identity, 5]).integers(0, 6, 5).tolist()))
    if photo:
        moved = CELEBA_DIALOG_LEVELS[(identity + photo) % 5]
        levels[moved] = (levels[moved] + 1 + photo) % 6
    return levels


def _face(identity: int, photo: int) -> Image.Image:
    profile = sample_identity(7, identity)
    face = render_face(profile, sample_variation(profile, np.random.default_rng([identity, photo])), HEIGHT)
    return Image.fromarray(face[:, (HEIGHT - WIDTH) // 2:(HEIGHT + WIDTH) // 2])


def make_tree(layout: str, root: Path, identities: int = 8, photos: int = 3) -> dict[str, list[Path]]:
    """Write a tree of ``identities x photos`` images under ``root``; returns its files by role
    (``images``, ``captions``: caption files, ``identities``: identity files; CelebA-Dialog also
    ``levels``: its attribute-level file)."""
    root = Path(root)
    corpus = "face2text" if layout == "face2text" else "mmcelebahq"
    texts = [entry["captions"] for entry in load_real_captions(corpus)]
    files: dict[str, list[Path]] = {"images": [], "captions": [], "identities": []}
    people = [(identity, photo) for identity in range(identities) for photo in range(photos)]
    if layout == "mmcelebahq":
        (root / "CelebA-HQ-img").mkdir(parents=True)
        (root / "celeba-caption").mkdir()
        lines = []
        for n, (identity, photo) in enumerate(people):
            files["images"].append(root / "CelebA-HQ-img" / f"{n}.jpg")
            _face(identity, photo).save(files["images"][-1], quality=90)
            files["captions"].append(root / "celeba-caption" / f"{n}.txt")
            files["captions"][-1].write_text("\n".join(texts[n % len(texts)][:4]) + "\n", encoding="utf-8")
            lines.append(f"{n}.jpg {5000 + identity}")
        files["identities"].append(root / "CelebA-HQ-identity.txt")
    elif layout == "celeba-dialog":
        (root / "image").mkdir(parents=True)
        (root / "text").mkdir()
        (root / "CelebAMask-HQ").mkdir()
        annotations, mapping, lines = {}, ["idx orig_idx orig_file"], []
        level_lines = [str(len(people)), " ".join(CELEBA_DIALOG_LEVELS)]
        for n, (identity, photo) in enumerate(people):
            files["images"].append(root / "image" / f"{n}.jpg")
            _face(identity, photo).save(files["images"][-1], quality=90)
            levels = _levels(identity, photo)
            annotations[f"{n}.jpg"] = {"overall_caption": texts[n % len(texts)][0],
                                       "attribute_wise_captions": {a: LEVEL_CAPTIONS[a].format(levels[a])
                                                                   for a in CELEBA_DIALOG_LEVELS}}
            level_lines.append(f"{n}.jpg " + " ".join(str(levels[a]) for a in CELEBA_DIALOG_LEVELS))
            celeba = 1000 + 50 * identity + photo
            mapping.append(f"{n} {celeba - 1} {celeba:06d}.jpg")
            lines.append(f"{celeba:06d}.jpg {5000 + identity}")
        files["captions"].append(root / "text" / "captions_hq.json")
        files["captions"][-1].write_text(json.dumps(annotations), encoding="utf-8")
        (root / "CelebAMask-HQ" / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
        (root / "Anno").mkdir()
        files["identities"].append(root / "Anno" / "identity_CelebA.txt")
        (root / "classification_label").mkdir()
        files["levels"] = [root / "classification_label" / "combined_annotation.txt"]
        files["levels"][0].write_text("\n".join(level_lines) + "\n")
    elif layout == "face2text":
        (root / "images").mkdir(parents=True)
        entries, lines = [], []
        for n, (identity, photo) in enumerate(people):
            name = f"{1000 + n:06d}.jpg"
            files["images"].append(root / "images" / name)
            _face(identity, photo).save(files["images"][-1], quality=90)
            entries.append({"image": name, "descriptions": [{"text": t} for t in texts[n % len(texts)]]})
            lines.append(f"{name} {5000 + identity}")
        files["captions"].append(root / "raw.json")
        files["captions"][-1].write_text(json.dumps(entries), encoding="utf-8")
        files["identities"].append(root / "identity_CelebA.txt")
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    files["identities"][0].write_text("\n".join(lines) + "\n")
    return files
