"""X-Modal training: config, presets, the graded-MNRL loop, atomic per-epoch checkpoints.

One step draws a batch of text queries and a batch of composed queries with their graded
negatives (:class:`tgfr.retrieval.data.GradedBatches`), runs every face of the step
through the encoder at once, and minimises

    MNRL(text -> face) + composed_weight * MNRL(reference + change -> face)
    + baseline_weight * (CLIP-style InfoNCE + TGFR word-region loss)

where the baseline heads see the face features with their gradient cut, so they are
measured beside the X-Modal model without changing it. The run directory holds
``checkpoint.pt`` (rewritten atomically after every epoch; ``resume=True`` continues after
the last finished one), ``config.json``, ``train_log.jsonl`` and the caches of the rendered
faces and of the frozen sentence features.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ..data.synthetic import SyntheticConfig
from ..ops import info_nce, word_region_loss
from ..training.checkpoint import save_checkpoint
from .data import GradedBatches, build_celeba_dialog_splits, build_retrieval_splits, images_to_tensor, state_ids
from .loss import GRADES, NEGATIVE_SETTINGS, active_grades, graded_mnrl
from .models import FACE_ENCODERS, TEXT_HEADS, XModalModel

CHECKPOINT = "checkpoint.pt"
DATASETS = ("synthetic", "celeba-dialog")
KIND = "xmodal"


@dataclass
class XModalConfig:
    """Everything a run depends on (see the README's X-Modal section for the choices)."""

    # data: the embedded synthetic set and its change pairs, or a real dataset (celeba-dialog) under data_root
    dataset: str = "synthetic"
    data_root: str | None = None
    skip_bad: bool = False
    num_identities: int = 300
    images_per_identity: int = 6
    image_size: int = 48
    captions_per_image: int = 2
    pairs_per_identity: int = 2
    split_fractions: list = field(default_factory=lambda: [0.6, 0.1, 0.3])  # of the people: train, valid, test
    seed: int = 0
    # model
    face_encoder: str = "iresnet"
    face_width: int = 16
    dim: int = 256
    text_encoder: str = "minilm"
    text_head: str = "sentence"  # "sentence": MLP of the sentence vector; "tokens": attention over token states
    max_tokens: int = 32
    # training
    epochs: int = 16
    steps_per_epoch: int = 0  # 0: one pass over the training people per epoch
    batch_size: int = 32
    text_views: int = 1  # captions of each text positive that query it per step (its face is encoded once)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scale: float = 20.0
    negatives: str = "hard"
    grade_starts: list = field(default_factory=lambda: [0.0, 0.2, 0.4])
    composed_weight: float = 1.0
    baseline_weight: float = 1.0
    backend: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS} (X-Modal needs attribute levels for change "
                             f"pairs), got {self.dataset!r}")
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"dataset {self.dataset!r} needs a data root (--data-root ROOT)")
        if self.face_encoder not in FACE_ENCODERS:
            raise ValueError(f"face_encoder must be one of {FACE_ENCODERS}, got {self.face_encoder!r}")
        if self.text_head not in TEXT_HEADS:
            raise ValueError(f"text_head must be one of {TEXT_HEADS}, got {self.text_head!r}")
        if self.negatives not in NEGATIVE_SETTINGS:
            raise ValueError(f"negatives must be one of {sorted(NEGATIVE_SETTINGS)}, got {self.negatives!r}")
        if len(self.grade_starts) != len(GRADES):
            raise ValueError(f"grade_starts must give {len(GRADES)} fractions, got {self.grade_starts}")
        for name in ("epochs", "batch_size", "pairs_per_identity", "face_width", "dim", "text_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be divisible by 16, got {self.image_size}")
        self.synthetic()  # its own checks (split fractions, sizes)

    def synthetic(self) -> SyntheticConfig:
        return SyntheticConfig(num_identities=self.num_identities, images_per_identity=self.images_per_identity,
                               image_size=self.image_size, captions_per_image=self.captions_per_image,
                               split_fractions=tuple(self.split_fractions), seed=self.seed)


PRESETS = {
    # seconds: tests and smoke runs
    "tiny": dict(num_identities=16, images_per_identity=2, image_size=32, captions_per_image=1,
                 pairs_per_identity=1, face_width=4, dim=32, epochs=2, batch_size=4, threads=1,
                 backend="vectorized"),  # pure PyTorch: the smoke run needs no compiled kernel
    # <= 10 minutes on two idle cores, training and evaluation
    "quick": dict(),
    # a longer run on more people
    "full": dict(num_identities=1000, images_per_identity=8, image_size=64, face_width=32, epochs=40,
                 batch_size=64),
}


def load_config(preset: str, overrides: list[str] = (), **flags) -> XModalConfig:
    """A preset with ``key=value`` overrides (values read as YAML), then the ``flags`` that are not None
    (the command line's --dataset/--data-root); unknown keys are errors."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    values = dict(PRESETS[preset])
    names = {f.name for f in dataclasses.fields(XModalConfig)}
    for override in overrides:
        key, _, text = override.partition("=")
        if key not in names:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(names))}")
        values[key] = yaml.safe_load(text)
    return XModalConfig(**{**values, **{k: v for k, v in flags.items() if v is not None}})  # the flags win


def all_captions(splits) -> list[str]:
    return [c for s in splits.values() for photo in s.faces.captions for c in photo] + \
        [c for s in splits.values() for c in s.changes.captions]


def prepare(config: XModalConfig, cache_dir):
    """The splits and the frozen sentence features of all their captions (both cached in ``cache_dir``)."""
    from .text import cached_text_features

    if config.dataset == "synthetic":
        splits = build_retrieval_splits(config.synthetic(), config.pairs_per_identity, cache_dir)
    else:
        splits = build_celeba_dialog_splits(config.data_root, config.image_size, config.pairs_per_identity,
                                            config.seed, config.skip_bad)
    text = cached_text_features(config.text_encoder, all_captions(splits), cache_dir, config.max_tokens)
    return splits, text


def build_model(config: XModalConfig, text_size: int) -> XModalModel:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    return XModalModel(config.face_encoder, config.image_size, config.face_width, text_size, config.dim,
                       text_head=config.text_head)


def _step_loss(model, config, batches: GradedBatches, text, rng, grades) -> dict[str, torch.Tensor]:
    faces, changes = batches.split.faces, batches.split.changes
    tb = batches.text_batch(rng, config.batch_size, grades, config.text_views)
    cb = batches.composed_batch(rng, config.batch_size, grades)
    # one encoder pass over every face of the step, in segments
    segments = {"text_pos": faces.images[tb["photos"]], "ref": changes.reference[cb["pairs"]],
                "target": changes.target[cb["pairs"]]}
    for g in grades:
        segments[f"text_{g}"] = faces.images[tb["negatives"][g]]
        rows = cb["negatives"][g]
        segments[f"comp_{g}"] = changes.other_before[rows] if g == "hard" else changes.target[rows]
    sizes = [len(v) for v in segments.values()]
    pooled, cells = model.encode_faces(images_to_tensor(np.concatenate(list(segments.values()))))
    embedded = dict(zip(segments, model.project_faces(pooled).split(sizes)))

    ids = torch.as_tensor(faces.identities[tb["photos"]])
    text_negatives = {g: (embedded[f"text_{g}"], torch.as_tensor(faces.identities[tb["negatives"][g]]))
                      for g in grades}
    views = [text.batch(captions) for captions in tb["captions"]]
    loss_text = sum(graded_mnrl(model.embed_texts(v), embedded["text_pos"], ids, text_negatives, config.scale,
                                config.backend) for v in views) / len(views)
    captions = views[0]

    pair_ids = changes.identities[cb["pairs"]]
    composed_negatives = {g: (embedded[f"comp_{g}"], state_ids(changes.identities[cb["negatives"][g]], g != "hard"))
                          for g in grades}
    queries = model.compose(embedded["ref"], text.batch([changes.captions[p] for p in cb["pairs"]]))
    loss_composed = graded_mnrl(queries, embedded["target"], state_ids(pair_ids, True), composed_negatives,
                                config.scale, config.backend)

    # baselines on the text positives' features, gradient cut from the encoder
    count = sizes[0]
    face_features, face_cells = pooled[:count].detach(), cells[:count].detach()
    temperature = torch.exp(-model.clip_log_scale)
    loss_clip = info_nce(model.clip_texts(captions.sentences), model.clip_faces(face_features), temperature,
                         class_ids=ids, backend=config.backend)
    image_to_caption, caption_to_image = word_region_loss(model.words(captions.tokens), model.regions(face_cells),
                                                          captions.mask,
                                                          class_ids=ids, backend=config.backend)
    loss_word_region = image_to_caption + caption_to_image
    total = loss_text + config.composed_weight * loss_composed + config.baseline_weight * (loss_clip + loss_word_region)
    return {"total": total, "text": loss_text, "composed": loss_composed, "clip": loss_clip,
            "word_region": loss_word_region}


def read_run(run_dir) -> dict:
    path = Path(run_dir) / CHECKPOINT if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no X-Modal checkpoint at {path} (expected the --out directory of "
                                f"'tgfr xmodal train' or its {CHECKPOINT})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise ValueError(f"{path} is not an X-Modal checkpoint")
    return state


def load_run(run_dir) -> tuple[XModalConfig, XModalModel, dict]:
    """The config and trained model (eval mode) of a run directory or checkpoint file."""
    state = read_run(run_dir)
    config = XModalConfig(**state["config"])
    model = build_model(config, state["text_size"])
    model.load_state_dict(state["model"])
    return config, model.eval(), state


def train_xmodal(config: XModalConfig, out, resume: bool = False, log=print) -> Path:
    """Train ``config`` into the directory ``out``; returns the checkpoint path."""
    out = Path(out)
    path = out / CHECKPOINT
    if path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run")
    out.mkdir(parents=True, exist_ok=True)
    splits, text = prepare(config, out)
    model = build_model(config, text.sentences.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epochs_done = 0
    if resume and path.exists():
        state = read_run(path)
        if state["config"] != dataclasses.asdict(config):
            raise ValueError(f"{out} was trained with another config; resume it with the same preset and overrides")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epochs_done = state["epochs_done"]
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    batches = GradedBatches(splits["train"], config.seed)
    steps = config.steps_per_epoch or max(1, len(batches.people) // config.batch_size)
    total_steps = config.epochs * steps
    # cosine decay per step; a resumed run continues it at its first unfinished step
    # (the loaded optimizer's param groups hold the initial learning rate the scheduler needs)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)),
        last_epoch=epochs_done * steps - 1)
    for epoch in range(epochs_done, config.epochs):
        model.train()
        rng = np.random.default_rng([config.seed, epoch, 11])  # per epoch: a resumed run draws the same batches
        started, sums = time.perf_counter(), {}
        for step in range(steps):
            grades = active_grades(config.negatives, (epoch * steps + step) / total_steps, config.grade_starts)
            losses = _step_loss(model, config, batches, text, rng, grades)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            schedule.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        record = {"epoch": epoch + 1, "grades": list(grades), "seconds": round(time.perf_counter() - started, 2),
                  **{k: round(v / steps, 4) for k, v in sums.items()}}
        save_checkpoint({"kind": KIND, "config": dataclasses.asdict(config), "text_size": text.sentences.shape[1],
                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epochs_done": epoch + 1}, path)
        with open(out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch + 1}/{config.epochs}  " + "  ".join(f"{k} {v}" for k, v in record.items()
                                                               if k not in ("epoch",)))
    return path
