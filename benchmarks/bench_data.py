"""Data-path benchmark on a generated Multi-Modal-CelebA-HQ-layout tree: DataLoader images/s with 0, 1
and 2 workers (decode, crop/resize, a degradation per photo), and the time of one align epoch
reading photos through the frozen face encoder against one reading its cached outputs (plus the
one-off time of filling the cache). Writes DATA_RESULTS.md and DATA_RESULTS.json beside this file.

    python benchmarks/bench_data.py                      # 3,000 photos of 256 px, model at 112 px
    python benchmarks/bench_data.py --images 60 --photo-size 64 --image-size 32 --out /tmp/bench  # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tgfr.data import (
    FaceCaptionDataset,
    collate_face_captions,
    load_real_captions,
    render_face,
    sample_identity,
    sample_variation,
)
from tgfr.data.sources import read_dataset
from tgfr.engine import Distributed, Epoch, StageRunner
from tgfr.models.text import Vocabulary
from tgfr.models.tgfr import TGFRModel
from tgfr.training import AlignStep, load_config

PHOTOS_PER_IDENTITY = 10


def make_tree(root: Path, images: int, photo_size: int) -> None:
    """``images`` JPEG photos of ``images / 10`` people with real Multi-Modal-CelebA-HQ captions."""
    texts = [entry["captions"] for entry in load_real_captions("mmcelebahq")]
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "celeba-caption").mkdir()
    lines = []
    for n in range(images):
        identity = n // PHOTOS_PER_IDENTITY
        profile = sample_identity(1, identity)
        face = render_face(profile, sample_variation(profile, np.random.default_rng([identity, n])), photo_size)
        Image.fromarray(face).save(root / "CelebA-HQ-img" / f"{n}.jpg", quality=90)
        (root / "celeba-caption" / f"{n}.txt").write_text("\n".join(texts[n % len(texts)]) + "\n")
        lines.append(f"{n}.jpg {identity}")
    (root / "CelebA-HQ-identity.txt").write_text("\n".join(lines) + "\n")


def loader_rate(dataset, workers: int, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_face_captions)
    started = time.perf_counter()
    count = sum(len(batch["index"]) for batch in loader)
    return count / (time.perf_counter() - started)


def align_epochs(split: FaceCaptionDataset, image_size: int, cache_dir: Path, batch_size: int) -> dict:
    """Seconds of one align epoch on photos, of filling the cache, and of one epoch on cached features."""
    config = load_config("demo", [f"model.image_size={image_size}", "progress=false", "num_threads=0",
                                  f"align.batch_size={batch_size}"])
    vocabulary = Vocabulary.from_captions(c for r in split.records for c in r.captions)
    model = TGFRModel(config.model, vocabulary)
    step = AlignStep(model, config, split, torch.device("cpu"), feature_cache=(cache_dir, {}))
    runner = StageRunner(step)

    def epoch(number: int) -> None:
        for batch in step.start_epoch(Epoch(number, number, torch.Generator().manual_seed(number), Distributed())):
            runner.train_batch(batch)

    photos = step.data
    started = time.perf_counter()
    step.prepare()  # the frozen face encoder's outputs into the cache
    filling = time.perf_counter() - started
    features = step.data
    epoch(0)  # warm-up: first-call costs of the ops and the model
    step.data = photos
    started = time.perf_counter()
    epoch(1)
    on_photos = time.perf_counter() - started
    step.data = features
    started = time.perf_counter()
    epoch(2)
    return {"align_epoch_on_photos_s": round(on_photos, 2), "cache_fill_s": round(filling, 2),
            "align_epoch_on_cache_s": round(time.perf_counter() - started, 2),
            "align_views": list(config.align.qualities), "model": "demo preset"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="photos in the generated tree (default 3000)")
    parser.add_argument("--photo-size", type=int, default=256, help="side of the stored JPEGs (default 256)")
    parser.add_argument("--image-size", type=int, default=112, help="model input side (default 112)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="directory of the results")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tgfr-bench-data-"))
    try:
        started = time.perf_counter()
        make_tree(work / "tree", args.images, args.photo_size)
        generation = time.perf_counter() - started
        records = read_dataset("mmcelebahq", work / "tree")
        split = FaceCaptionDataset(records, quality="mixed", image_size=args.image_size)
        rates = {str(w): round(loader_rate(split, w, args.batch_size), 1) for w in args.workers}
        results = {
            "images": args.images, "photo_size": args.photo_size, "image_size": args.image_size,
            "batch_size": args.batch_size, "tree_generation_s": round(generation, 1),
            "loader_images_per_s_by_workers": rates,
            **align_epochs(split, args.image_size, work / "features", args.batch_size),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.processor(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "DATA_RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Data path: {args.images} photos ({args.photo_size} px JPEG) to {args.image_size} px, "
             f"batch {args.batch_size}", "", "| loader workers | images/s |", "|---|---|"]
    lines += [f"| {w} | {r} |" for w, r in rates.items()]
    lines += ["", "| align epoch | seconds |", "|---|---|",
              f"| on photos (decode + frozen encoder every batch) | {results['align_epoch_on_photos_s']} |",
              f"| filling the feature cache (once) | {results['cache_fill_s']} |",
              f"| on cached features | {results['align_epoch_on_cache_s']} |"]
    (args.out / "DATA_RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
