"""Datasets by name: reading a real tree with its bad items caught up front, and the train/test split.

``read_dataset(name, root, skip_bad)`` reads one of :data:`REAL_DATASETS` with its reader,
then opens every image once: a missing root, a missing caption or identity file, an empty
caption and an image that does not decode are :class:`DataError` naming the file, unless
``skip_bad`` is set, in which case such images are left out and listed.

``split_dataset(name, records, root, seed, skip_bad)`` splits the photos as the paper's
sources do (see :data:`SPLIT_RULES`); on a partial tree (a subset of a release, a test
fixture) it draws an identity-disjoint split from the seed instead and says why. Every test
identity has at least two photos (a genuine pair and an identification probe).
"""
from __future__ import annotations

import json
import pickle
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .dataset import FaceRecord
from .readers import read_celeba_dialog, read_celebahq_mapping, read_face2text, read_mmcelebahq

DATASETS = ("synthetic", "mmcelebahq", "face2text", "celeba-dialog")
REAL_DATASETS = DATASETS[1:]
READERS = {"mmcelebahq": read_mmcelebahq, "face2text": read_face2text, "celeba-dialog": read_celeba_dialog}
# Images in a complete release: the official split applies only to a complete tree.
RELEASE_IMAGES = {"mmcelebahq": 30_000, "celeba-dialog": 30_000}
# Share of photos in a seeded test split: MM-CelebA-HQ's 6,000 of 30,000.
TEST_FRACTION = 0.2
# CelebA's own partition (list_eval_partition.txt) by CelebA file number: 1-162770 train,
# 162771-182637 validation, 182638-202599 test; identities are disjoint across the three.
CELEBA_FIRST_TEST_FILE = 182_638
SPLIT_RULES = {
    "synthetic": "identity-disjoint split of the synthetic config (data.split_fractions, seed)",
    "mmcelebahq": "the release's train/test lists (24,000 / 6,000 images: train/filenames.pickle and "
                  "test/filenames.pickle, or train.txt and test.txt)",
    "celeba-dialog": "CelebA's official partition through CelebA-HQ-to-CelebA-mapping.txt: train and "
                     "validation images train, test images (CelebA file >= 182638) test",
    "face2text": f"identity-disjoint split drawn from the seed ({TEST_FRACTION:.0%} of the photos in test)",
}


class DataError(ValueError):
    """Bad input data: the message names the file or directory and what was expected."""


def _decode_problem(record: FaceRecord) -> str | None:
    try:
        with Image.open(record.image_path) as image:
            image.draft("RGB", (32, 32))  # JPEG decodes at a fraction of its size: a cheap full check
            image.convert("RGB").load()
    except Exception as error:  # PIL raises many types for a broken file
        return f"image {record.image_path} does not decode ({type(error).__name__}: {error})"
    return None


def check_images(records: list[FaceRecord], skip_bad: bool, skipped: list[str], workers: int = 4,
                 progress: bool = False) -> list[FaceRecord]:
    """The records whose image decodes; a broken one is a :class:`DataError` unless ``skip_bad``."""
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without the GIL
        problems = pool.map(_decode_problem, records, chunksize=64)
        if progress:
            problems = tqdm(problems, total=len(records), desc="checking images", leave=False)
        problems = list(problems)
    kept = []
    for record, problem in zip(records, problems):
        if problem is None:
            kept.append(record)
        elif not skip_bad:
            raise DataError(f"{problem} (pass --skip-bad to skip bad images)")
        else:
            skipped.append(problem)
    return kept


def read_dataset(name: str, root, skip_bad: bool = False, skipped: list[str] | None = None,
                 check_decoding: bool = True, progress: bool = False) -> list[FaceRecord]:
    """The records of real dataset ``name`` under ``root``, bad items raised or (``skip_bad``) skipped.

    Skipped items' problems are appended to ``skipped``.
    """
    if name not in READERS:
        raise DataError(f"dataset must be one of {REAL_DATASETS}, got {name!r}")
    if root is None:
        raise DataError(f"dataset {name!r} needs a data root (--data-root ROOT)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory")
    skipped = [] if skipped is None else skipped
    try:
        records = READERS[name](root, strict=not skip_bad, skipped=skipped)
    except FileNotFoundError as error:
        raise DataError(str(error)) from error
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(str(error).replace("pass strict=False", "pass --skip-bad")) from error
    if check_decoding:
        records = check_images(records, skip_bad, skipped, progress=progress)
    if not records:
        raise DataError(f"{name} at {root}: no usable image")
    return records


@dataclass
class DataSplit:
    """The photos of each side and how they were chosen."""

    train: list[FaceRecord]
    test: list[FaceRecord]
    rule: str
    notes: list[str] = field(default_factory=list)


def seeded_split(records: list[FaceRecord], seed: int, test_fraction: float = TEST_FRACTION) -> tuple[list, list]:
    """Identity-disjoint split: identities with two or more photos, in an order drawn from ``seed``,
    go to test until it holds ``test_fraction`` of the photos and two identities (impostor pairs need
    two); at least one identity stays in train."""
    by_identity = defaultdict(list)
    for record in records:
        by_identity[record.identity].append(record)
    keys = sorted(by_identity, key=lambda k: (str(type(k)), k))
    eligible = [k for k in keys if len(by_identity[k]) >= 2]
    if len(eligible) < 2 or len(keys) < 3:
        raise DataError(f"a split needs at least three identities, two of them with two or more photos (the "
                        f"test identities); the data have {len(keys)} identities, {len(eligible)} with two or more "
                        f"photos")
    order = np.random.default_rng([seed, 11]).permutation(len(eligible))
    test_keys, count = set(), 0
    for position in order:
        enough = count >= test_fraction * len(records) and len(test_keys) >= 2
        if enough or len(test_keys) == len(keys) - 1:
            break
        test_keys.add(eligible[position])
        count += len(by_identity[eligible[position]])
    train = [r for r in records if r.identity not in test_keys]
    test = [r for r in records if r.identity in test_keys]
    return train, test


def _read_name_list(path: Path) -> list[str]:
    """Image names of a release split list: ``filenames.pickle`` (a pickled list of str) or a text file."""
    if path.suffix == ".pickle":
        class _PlainData(pickle.Unpickler):
            def find_class(self, module, name):  # lists of str need no class: refuse anything else
                raise DataError(f"{path}: expected a pickled list of image names, found {module}.{name}")
        with open(path, "rb") as handle:
            names = _PlainData(handle, encoding="latin1").load()
        if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
            raise DataError(f"{path}: expected a pickled list of image names")
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _stem(name: str) -> str:
    return Path(name).stem


def _official_test_names(name: str, root: Path) -> tuple[set[str] | None, str]:
    """Stems of the official test images, or None and why there is no official split."""
    if name == "mmcelebahq":
        for train_file, test_file in (("train/filenames.pickle", "test/filenames.pickle"), ("train.txt", "test.txt")):
            if (root / train_file).is_file() and (root / test_file).is_file():
                return {_stem(n) for n in _read_name_list(root / test_file)}, ""
        return None, f"no release split lists (train/filenames.pickle and test/filenames.pickle) under {root}"
    if name == "celeba-dialog":
        for directory in (".", "CelebAMask-HQ", "Anno"):
            mapping = root / directory / "CelebA-HQ-to-CelebA-mapping.txt"
            if mapping.is_file():
                celeba_file = read_celebahq_mapping(mapping)
                return {hq for hq, file in celeba_file.items() if int(_stem(file)) >= CELEBA_FIRST_TEST_FILE}, ""
        return None, f"no CelebA-HQ-to-CelebA-mapping.txt under {root}"
    return None, "the release defines no split"


def split_dataset(name: str, records: list[FaceRecord], root, seed: int, skip_bad: bool = False,
                  skipped: list[str] | None = None) -> DataSplit:
    """The paper's split of a real dataset's records (see :data:`SPLIT_RULES`), or a seeded one."""
    root = Path(root)
    skipped = [] if skipped is None else skipped
    test_names, reason = _official_test_names(name, root)
    release = RELEASE_IMAGES.get(name)
    if test_names is not None and release is not None and len(records) + len(skipped) < release:
        test_names, reason = None, f"the tree holds {len(records) + len(skipped)} of the release's {release} images"
    if test_names is not None:
        train = [r for r in records if _stem(r.name) not in test_names]
        test = [r for r in records if _stem(r.name) in test_names]
        counts = defaultdict(int)
        for record in test:
            counts[record.identity] += 1
        lonely = [r for r in test if counts[r.identity] < 2]
        if lonely and not skip_bad:
            raise DataError(f"identity {lonely[0].identity} has one test image ({lonely[0].image_path}); "
                            f"verification needs two (pass --skip-bad to skip such identities)")
        skipped.extend(f"identity {r.identity} has one test image ({r.image_path})" for r in lonely)
        test = [r for r in test if counts[r.identity] >= 2]
        if train and len({r.identity for r in test}) >= 2:
            return DataSplit(train, test, SPLIT_RULES[name])
        reason = "the official split leaves no training photo or fewer than two test identities on this tree"
    train, test = seeded_split(records, seed)
    rule = f"identity-disjoint split drawn from seed {seed} ({TEST_FRACTION:.0%} of the photos in test)"
    notes = [] if name == "face2text" else [f"{name}: not the official split ({reason}); using an {rule}"]
    return DataSplit(train, test, rule, notes)


def split_names(records: list[FaceRecord]) -> list[str]:
    return [r.name for r in records]


def select_records(records: list[FaceRecord], names: list[str], where: str) -> list[FaceRecord]:
    """The records named ``names``, in that order; a missing one is a :class:`DataError`."""
    by_name = {r.name: r for r in records}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{where}: {len(missing)} image(s) of the saved split are not in the data, "
                        f"e.g. {missing[:3]}")
    return [by_name[n] for n in names]
