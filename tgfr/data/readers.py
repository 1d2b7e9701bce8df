"""Readers of the real face-caption datasets, from a root the user gives (never downloaded).

Each returns a list of :class:`FaceRecord` (image path, captions, CelebA identity) for
:class:`FaceCaptionDataset`. Assumed layouts (every path can also be given explicitly):

Multi-Modal-CelebA-HQ (``read_mmcelebahq``)::

    root/CelebA-HQ-img/<n>.jpg          30,000 images (also ``image/`` or ``images/``)
    root/celeba-caption/<n>.txt         one caption per line (also ``text/celeba-caption/``)
    + the identities, see below

CelebA-Dialog (``read_celeba_dialog``)::

    root/image/<n>.jpg                  (also ``CelebA-HQ-img/``)
    root/text/captions_hq.json          {"<n>.jpg": {"overall_caption": str,
                                          "attribute_wise_captions": {attribute: str}}}
                                        (also ``root/captions_hq.json``)
    + the identities, see below

CelebA-Dialog's fine-grained attribute levels (``read_celeba_dialog_levels``, for change pairs)::

    root/classification_label/combined_annotation.txt   (also ``root/`` or ``root/text/``)

    one line per image, ``<n>.jpg <Bangs> <Eyeglasses> <No_Beard> <Smiling> <Young>``, each an
    integer level 0-5 (more bangs, heavier glasses up to sunglasses, more beard, a wider smile,
    an older face); an optional first line holding only the image count, and an optional
    header line naming the five attributes, which then gives the column order.

Identities of CelebA-HQ image ``<n>.jpg`` (both readers), the first that exists of:

* ``CelebA-HQ-identity.txt``: lines ``<n>.jpg <identity>`` (as distributed with CelebAMask-HQ
  derivatives);
* ``CelebA-HQ-to-CelebA-mapping.txt`` (CelebAMask-HQ; header ``idx orig_idx orig_file``,
  lines ``<n> <orig_idx> <celeba file>``) together with CelebA's ``identity_CelebA.txt``
  (lines ``<celeba file> <identity>``, CelebA ``Anno/``),

looked up in ``root``, ``root/CelebAMask-HQ`` and ``root/Anno``.

Face2Text (``read_face2text``)::

    root/raw.json | clean.json | face2text.json | face2text.csv   descriptions (see below)
    root/images/<image>                 (also ``img_align_celeba/``)
    root/identity_CelebA.txt            lines ``<image> <identity>``

The descriptions may be a JSON list of objects ``{"image" | "filename" | "file_name": name,
"descriptions" | "captions": [str | {"text": str}] | "description" | "text": str}`` (the
Face2Text release format; several objects of one image are merged), a JSON object
``{name: [str] | str}``, or a CSV with an image column (``image``, ``filename`` or
``file_name``) and a text column (``description``, ``caption`` or ``text``).

With ``strict=True`` (the default) a captioned image without a file, an identity or a
caption is an error naming it; with ``strict=False`` it is skipped (and its problem appended
to the list ``skipped`` when one is given).
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .dataset import FaceRecord

IDENTITY_DIRS = (".", "CelebAMask-HQ", "Anno")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _first_existing(root: Path, candidates: Iterable[str], what: str) -> Path:
    tried = [root / c for c in candidates]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"{what}: none of {[str(p) for p in tried]} exists")


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_pairs(path: Path, value_column: int = 1, skip_header: bool = False) -> dict[str, str]:
    """Whitespace-separated table: first column -> ``value_column``."""
    pairs = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or (skip_header and number == 1):
                continue
            if len(fields) <= value_column:
                raise ValueError(f"{path}:{number}: expected at least {value_column + 1} columns, "
                                 f"got {line.strip()!r}")
            pairs[fields[0]] = fields[value_column]
    return pairs


def read_celebahq_mapping(path: str | Path) -> dict[str, str]:
    """``CelebA-HQ-to-CelebA-mapping.txt``: CelebA-HQ index -> the CelebA file it was made from."""
    return _read_pairs(Path(path), value_column=2, skip_header=True)


def _image_number(name: str) -> int:
    return int(Path(name).stem)


def _parse_identity(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def read_celeba_identities(path: str | Path) -> dict[str, int | str]:
    """``identity_CelebA.txt`` or ``CelebA-HQ-identity.txt``: image name -> identity."""
    return {name: _parse_identity(identity) for name, identity in _read_pairs(Path(path)).items()}


def celebahq_identities(root: str | Path, identity_file: str | Path | None = None,
                        mapping_file: str | Path | None = None,
                        celeba_identity_file: str | Path | None = None) -> dict[int, int | str]:
    """Identity of each CelebA-HQ image, keyed by its number ``n`` (of ``<n>.jpg``)."""
    root = Path(root)

    def find(name: str) -> Path | None:
        for directory in IDENTITY_DIRS:
            if (root / directory / name).exists():
                return root / directory / name
        return None

    if identity_file is None and mapping_file is None:
        identity_file = find("CelebA-HQ-identity.txt")
    if identity_file is not None:
        return {_image_number(name): identity for name, identity in read_celeba_identities(identity_file).items()}
    mapping_file = mapping_file or find("CelebA-HQ-to-CelebA-mapping.txt")
    celeba_identity_file = celeba_identity_file or find("identity_CelebA.txt")
    if mapping_file is None or celeba_identity_file is None:
        raise FileNotFoundError(
            f"no identities under {root}: need CelebA-HQ-identity.txt, or CelebA-HQ-to-CelebA-mapping.txt "
            f"and identity_CelebA.txt, in one of {IDENTITY_DIRS}")
    celeba = {_image_number(name): identity for name, identity in read_celeba_identities(celeba_identity_file).items()}
    identities = {}
    for hq_index, celeba_file in read_celebahq_mapping(mapping_file).items():
        celeba_number = _image_number(celeba_file)
        if celeba_number in celeba:
            identities[int(hq_index)] = celeba[celeba_number]
    return identities


def _image_path(directory: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (directory / f"{stem}{suffix}").exists():
            return directory / f"{stem}{suffix}"
    return None


def _records(captions: Mapping[str, tuple[str, ...]], image_dir: Path, identity_of, strict: bool,
             source: str, caption_source, skipped: list | None = None) -> list[FaceRecord]:
    """Join captions (keyed by image name) with image files and identities.

    ``caption_source(name)`` names the file an image's captions come from (for messages);
    with ``strict=False`` every skipped image's problem is appended to ``skipped``.
    """
    records = []
    for name in sorted(captions, key=_natural_key):
        path = image_dir / name if Path(name).suffix else _image_path(image_dir, name)
        identity = identity_of(name)
        problem = None
        if path is None or not path.exists():
            problem = f"no image file for {name!r} in {image_dir}"
        elif identity is None:
            problem = f"no identity for image {name!r}"
        elif not captions[name]:
            problem = f"empty caption for image {name!r} in {caption_source(name)}"
        if problem:
            if strict:
                raise ValueError(f"{source}: {problem} (pass strict=False to skip such images)")
            if skipped is not None:
                skipped.append(problem)
            continue
        records.append(FaceRecord(identity=identity, captions=captions[name], image_path=str(path), name=path.name))
    if not records:
        raise ValueError(f"{source}: no usable image (captions, image file and identity)")
    return records


def _clean(captions: Iterable[str]) -> tuple[str, ...]:
    seen = []
    for caption in captions:
        caption = " ".join(str(caption).split())
        if caption and caption not in seen:
            seen.append(caption)
    return tuple(seen)


def read_mmcelebahq(root: str | Path, image_dir: str | Path | None = None, caption_dir: str | Path | None = None,
                    identity_file: str | Path | None = None, mapping_file: str | Path | None = None,
                    celeba_identity_file: str | Path | None = None, strict: bool = True,
                    skipped: list | None = None) -> list[FaceRecord]:
    """Multi-Modal-CelebA-HQ: one record per captioned image (layout in the module docs)."""
    root = Path(root)
    image_dir = Path(image_dir) if image_dir else _first_existing(
        root, ("CelebA-HQ-img", "image", "images"), "Multi-Modal-CelebA-HQ images")
    caption_dir = Path(caption_dir) if caption_dir else _first_existing(
        root, ("celeba-caption", "text/celeba-caption"), "Multi-Modal-CelebA-HQ captions")
    identities = celebahq_identities(root, identity_file, mapping_file, celeba_identity_file)
    captions = {}
    for text_file in caption_dir.glob("*.txt"):
        captions[text_file.stem] = _clean(text_file.read_text(encoding="utf-8").splitlines())
    return _records(captions, image_dir, lambda name: identities.get(int(name)) if name.isdigit() else None,
                    strict, f"Multi-Modal-CelebA-HQ at {root}", lambda name: caption_dir / f"{name}.txt", skipped)


def read_celeba_dialog(root: str | Path, image_dir: str | Path | None = None,
                       captions_file: str | Path | None = None, identity_file: str | Path | None = None,
                       mapping_file: str | Path | None = None, celeba_identity_file: str | Path | None = None,
                       attribute_captions: bool = True, strict: bool = True,
                       skipped: list | None = None) -> list[FaceRecord]:
    """CelebA-Dialog: the overall caption of each image, then (with ``attribute_captions``)
    its attribute-wise captions in attribute order, as separate captions."""
    root = Path(root)
    image_dir = Path(image_dir) if image_dir else _first_existing(
        root, ("image", "CelebA-HQ-img", "images"), "CelebA-Dialog images")
    captions_file = Path(captions_file) if captions_file else _first_existing(
        root, ("text/captions_hq.json", "captions_hq.json"), "CelebA-Dialog captions")
    identities = celebahq_identities(root, identity_file, mapping_file, celeba_identity_file)
    annotations = json.loads(captions_file.read_text(encoding="utf-8"))
    if not isinstance(annotations, dict):
        raise ValueError(f"{captions_file}: expected a JSON object keyed by image name")
    captions = {}
    for name, entry in annotations.items():
        if not isinstance(entry, dict) or "overall_caption" not in entry:
            raise ValueError(f"{captions_file}: entry {name!r} lacks 'overall_caption'")
        texts = [entry["overall_caption"]]
        if attribute_captions:
            by_attribute = entry.get("attribute_wise_captions") or {}
            texts += [by_attribute[k] for k in sorted(by_attribute)]
        captions[name] = _clean(texts)
    return _records(captions, image_dir,
                    lambda name: identities.get(_image_number(name)) if Path(name).stem.isdigit() else None,
                    strict, f"CelebA-Dialog at {root}", lambda name: captions_file, skipped)


def _face2text_entries(path: Path) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            image_column = next((c for c in ("image", "filename", "file_name") if c in columns), None)
            text_column = next((c for c in ("description", "caption", "text") if c in columns), None)
            if image_column is None or text_column is None:
                raise ValueError(f"{path}: needs an image column (image/filename/file_name) and a text "
                                 f"column (description/caption/text), has {columns}")
            for row in reader:
                merged.setdefault(row[image_column], []).append(row[text_column])
        return merged
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        return {name: [value] if isinstance(value, str) else list(value) for name, value in data.items()}
    for number, entry in enumerate(data):
        name = next((entry[k] for k in ("image", "filename", "file_name") if k in entry), None)
        texts = next((entry[k] for k in ("descriptions", "captions", "description", "text") if k in entry), None)
        if name is None or texts is None:
            raise ValueError(f"{path}: entry {number} needs an image key (image/filename/file_name) and "
                             f"descriptions/captions/description/text, has {sorted(entry)}")
        texts = [texts] if isinstance(texts, str) else texts
        merged.setdefault(name, []).extend(t["text"] if isinstance(t, dict) else t for t in texts)
    return merged


def read_face2text(root: str | Path, annotations: str | Path | None = None, image_dir: str | Path | None = None,
                   identity_file: str | Path | None = None, strict: bool = True,
                   skipped: list | None = None) -> list[FaceRecord]:
    """Face2Text: the descriptions of each image, with the identity from ``identity_file``
    (CelebA's ``identity_CelebA.txt`` format)."""
    root = Path(root)
    annotations = Path(annotations) if annotations else _first_existing(
        root, ("raw.json", "clean.json", "face2text.json", "face2text.csv"), "Face2Text descriptions")
    image_dir = Path(image_dir) if image_dir else _first_existing(
        root, ("images", "img_align_celeba"), "Face2Text images")
    identities = read_celeba_identities(identity_file or _first_existing(
        root, ("identity_CelebA.txt", "Anno/identity_CelebA.txt"), "Face2Text identities"))
    captions = {name: _clean(texts) for name, texts in _face2text_entries(annotations).items()}
    return _records(captions, image_dir, identities.get, strict, f"Face2Text at {root}", lambda name: annotations,
                    skipped)


#: CelebA-Dialog's fine-grained attributes, in the column order of its level file.
CELEBA_DIALOG_LEVELS = ("Bangs", "Eyeglasses", "No_Beard", "Smiling", "Young")
CELEBA_DIALOG_LEVEL_FILES = ("classification_label/combined_annotation.txt", "combined_annotation.txt",
                             "text/combined_annotation.txt")


def read_celeba_dialog_levels(root: str | Path, levels_file: str | Path | None = None) -> dict[str, dict[str, int]]:
    """CelebA-Dialog's attribute levels: image name (``<n>.jpg``) -> {attribute: level 0-5}
    (layout in the module docs)."""
    path = Path(levels_file) if levels_file else _first_existing(
        Path(root), CELEBA_DIALOG_LEVEL_FILES, "CelebA-Dialog attribute levels")
    columns, levels = CELEBA_DIALOG_LEVELS, {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or (not levels and len(fields) == 1 and fields[0].isdigit()):
                continue  # blank, or the leading image count
            if not levels and set(fields) == set(CELEBA_DIALOG_LEVELS):
                columns = tuple(fields)  # header: the column order
                continue
            values = fields[1:]
            if len(values) != len(columns) or not all(v.isdigit() and int(v) <= 5 for v in values):
                raise ValueError(f"{path}:{number}: expected '<image> ' and {len(columns)} levels 0-5 "
                                 f"({' '.join(columns)}), got {line.strip()!r}")
            levels[fields[0]] = {name: int(v) for name, v in zip(columns, values)}
    if not levels:
        raise ValueError(f"{path}: no image levels")
    return levels
