"""Two-step TGFR training (plus the face encoder when no pretrained one is given).

* step ``"image"`` (only without ``model.image_weights``): the iResNet with an
  ArcFace head on the training identities (SGD); frozen afterwards.
* step ``"align"``: caption encoder, word/global projections and IMIM with the
  FCAM loss (Adam; the caption encoder has its own learning rate), or a baseline's
  caption objective (``tgfr.training.objectives``).
* step ``"fusion"``: the fusion heads of ``fusion.modes`` (FCFM, FLF, CGFR-style),
  each with its own ArcFace head (SGD, learning rate divided by 10 at the configured epochs).

The data are read and split before anything trains (bad input stops the run there);
the split is written to ``out_dir/split.json``. Every epoch appends a JSON line to
``out_dir/log.jsonl`` and atomically rewrites
``out_dir/checkpoint.pt`` (model, optimizer, loss heads, progress). Each epoch
reseeds from ``(seed, step, epoch)``, so a run that is killed and resumed gives
the same weights as one that was not: ``train(config, out_dir, resume=True)``
restarts at the first unfinished epoch of the unfinished step.
"""
from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.heads import ArcFaceHead
from ..models.text import Vocabulary
from ..models.tgfr import TGFRModel
from .checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict, config_to_dict, save_config
from .data import (
    FeatureViews,
    TrainingViews,
    build_splits,
    check_same_split,
    make_batch_sampler,
    make_loader,
    sample_captions,
    write_split,
)
from .distributed import Distributed
from .features import cached_features
from .grad_cache import align_loss_and_backward
from .objectives import build_align_loss, flipped_rows, pairs_views, second_view_captions
from .sampler import SubjectPairBatchSampler

STEPS = ("image", "align", "fusion")
LOG_NAME = "log.jsonl"
# architecture fields written into the config from a pretrained face-encoder checkpoint
_IMAGE_FIELDS_FROM_WEIGHTS = ("image_layers", "image_width", "image_embedding", "image_variant", "image_weights")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def steps_for(config: TrainConfig) -> tuple[str, ...]:
    return STEPS[1:] if config.model.image_weights else STEPS


def _epoch_seed(seed: int, step: str, epoch: int) -> int:
    return seed * 1_000_003 + STEPS.index(step) * 10_007 + epoch


def _step_lr(base_lr: float, milestones, epoch: int) -> float:
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


class _Step:
    """One training step: what it trains, with which optimizer, and its batch loss."""

    def __init__(self, name: str, model: TGFRModel, config: TrainConfig, data: TrainingViews, device):
        self.name, self.model, self.config, self.data, self.device = name, model, config, data, device
        self.distributed = Distributed()  # one process; Distributed.prepare_step replaces it under torchrun
        self.settings = getattr(config, name)
        s = self.settings
        embedding = model.config.embedding_size
        torch.manual_seed(_epoch_seed(config.seed, name, -1))  # a resumed run initialises the heads alike
        if name == "image":
            self.heads = ArcFaceHead(model.image_encoder.embedding_size, data.num_classes, s.arcface_scale,
                                     s.arcface_margin)
        elif name == "align":
            self.heads = build_align_loss(s, model.config.dim, data.num_classes, config.ops_backend)
        else:
            for mode in s.modes:
                model.fusion_module(mode)  # a mode the model lacks is an error here, not mid-epoch
            self.heads = nn.ModuleDict({
                mode: ArcFaceHead(embedding, data.num_classes, s.arcface_scale, s.arcface_margin)
                for mode in s.modes
            })
        self.heads.to(device)
        # align.text_lr=0: a frozen caption encoder (eval mode, so its token features can be cached),
        # in the fusion step of a resumed run too
        self.frozen_text = config.align.text_lr == 0
        if self.frozen_text:
            model.text_encoder.requires_grad_(False)
        self.optimizer = self._optimizer()

    def _trained_modules(self) -> list[nn.Module]:
        m = self.model
        if self.name == "image":
            return [m.image_encoder]
        if self.name == "align":
            return [getattr(m, part) for part in self.heads.trained
                    if not (self.frozen_text and part == "text_encoder")]
        return [m.fusion_module(mode) for mode in self.settings.modes]

    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        trained = [p for module in self._trained_modules() for p in module.parameters() if p.requires_grad]
        if self.name == "align":
            text = {id(p) for p in self.model.text_encoder.parameters()}
            groups = [
                {"params": [p for p in trained if id(p) in text], "lr": s.text_lr, "base_lr": s.text_lr},
                {"params": [p for p in trained if id(p) not in text] + list(self.heads.parameters()),
                 "lr": s.lr, "base_lr": s.lr},
            ]
            adam = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
            return adam(groups, weight_decay=s.weight_decay)
        params = trained + list(self.heads.parameters())
        return torch.optim.SGD([{"params": params, "lr": s.lr, "base_lr": s.lr}], momentum=s.momentum,
                               weight_decay=s.weight_decay)

    def start_epoch(self, epoch: int) -> float:
        """Set train/eval modes and this epoch's learning rate; returns the main learning rate."""
        self.model.eval()  # frozen parts keep their BatchNorm statistics and drop no units
        for module in self._trained_modules():
            module.train()
        self.heads.train()
        milestones = getattr(self.settings, "lr_milestones", [])
        for group in self.optimizer.param_groups:
            group["lr"] = _step_lr(group["base_lr"], milestones, epoch)
        return self.optimizer.param_groups[-1]["lr"]

    def use_cached_features(self, cache_dir, dataset_key: dict) -> int:
        """Train on the frozen face encoder's cached outputs instead of photos; returns the views encoded now."""
        if self.name == "image" or isinstance(self.data, FeatureViews):
            return 0
        c = self.config
        features, encoded = cached_features(self.model.image_encoder, self.data, cache_dir, c.dataset, dataset_key,
                                            num_workers=c.num_workers, device=self.device, progress=c.progress)
        self.data = FeatureViews(self.data, features)
        return encoded

    def frozen_image(self, batch: dict):
        """The frozen face encoder's (global feature, regions) of a batch, cached or computed; in a
        two-view batch, the second view of a one-sample subject is its mirror image."""
        if "global" in batch:
            feature = batch["global"].to(self.device, non_blocking=True)
            regions = batch["regions"].to(self.device, non_blocking=True)
        else:
            with torch.no_grad():
                feature, regions = self.model.image_encoder(batch["image"].to(self.device, non_blocking=True))
        if pairs_views(self.settings):
            flip = flipped_rows(batch["index"])
            if flip.any():
                photos = torch.stack([self.data.photo(int(i)) for i in batch["index"][flip]])
                with torch.no_grad():
                    mirrored = self.model.image_encoder(photos.flip(-1).to(self.device))
                rows = flip.nonzero().flatten().to(feature.device)
                feature, regions = feature.index_copy(0, rows, mirrored[0]), regions.index_copy(0, rows, mirrored[1])
        return feature, regions

    def batch_sampler(self, generator: torch.Generator, seed: int):
        """This epoch's batches (this rank's part of them under torchrun): two views per subject for
        eq. 7's IMCL, else shuffled."""
        ranks, batch_size = self.distributed, self.settings.batch_size
        if pairs_views(self.settings):
            batches = SubjectPairBatchSampler(self.data.labels, batch_size, generator)
            return ranks.pair_batches(batches) if ranks.enabled else batches
        if ranks.enabled:
            return ranks.batch_sampler(len(self.data), batch_size, seed)
        return make_batch_sampler(self.data, batch_size, generator)

    def captions(self, batch: dict, generator: torch.Generator) -> list[str]:
        if pairs_views(self.settings):
            return second_view_captions(batch["captions"], batch["index"], generator)
        return sample_captions(batch["captions"], generator)

    def loss(self, batch: dict, captions: list[str]) -> dict:
        labels = batch["label"].to(self.device, non_blocking=True)
        if self.name == "image":
            feature, _ = self.model.image_encoder(batch["image"].to(self.device, non_blocking=True))
            return {"loss": self.heads(feature, labels)}
        feature, regions = self.frozen_image(batch)
        if self.name == "align":
            return self.heads(self.model.project_image(feature, regions), self.model.encode_text(captions), labels)
        with torch.no_grad():
            image = self.model.project_image(feature, regions)
            text = self.model.encode_text(captions)
        terms = {mode: self.heads[mode](self.model.fuse(image, text, mode), labels) for mode in self.settings.modes}
        terms["loss"] = sum(terms.values())
        return terms

    def trainer_state(self) -> dict:
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_trainer_state(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])


def _check_resumable(config: TrainConfig, saved: dict) -> None:
    given = config_to_dict(config)
    model_given = {k: v for k, v in given["model"].items() if k not in _IMAGE_FIELDS_FROM_WEIGHTS}
    model_saved = {k: v for k, v in saved["model"].items() if k not in _IMAGE_FIELDS_FROM_WEIGHTS}
    differing = [f"model.{k}" for k in model_given if model_given[k] != model_saved.get(k)]
    differing += [key for key in ("seed", "data", "dataset") if given[key] != saved.get(key, "synthetic")]
    if differing:
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in {differing}; "
                         "only step settings (epochs, learning rates, ...) may change between runs")


def train(config: TrainConfig, out_dir, resume: bool = False) -> Path:
    """Train (or resume training) a TGFR model into ``out_dir``; returns the checkpoint path.

    ``resume=True`` continues the run in ``out_dir`` (its model, data and seed must
    match ``config``) and starts a new one if there is none; without it an existing
    checkpoint in ``out_dir`` is an error rather than being overwritten.
    """
    # a private copy: resuming and pretrained weights fill in fields of the model config
    config = config_from_dict(config) if isinstance(config, dict) else copy.deepcopy(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_file = out_dir / CHECKPOINT_NAME
    saved = None
    if checkpoint_file.exists():
        if not resume:
            raise FileExistsError(f"{out_dir} already holds a training run; pass resume=True or use another out_dir")
        saved = read_checkpoint(checkpoint_file)
        _check_resumable(config, saved["config"])
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    ranks = Distributed.from_environment(config.distributed, device)  # torchrun: one process per rank
    device = ranks.device(device)
    torch.manual_seed(config.seed)
    splits = build_splits(config, progress=config.progress)  # bad input stops here, before any training
    if saved is not None:
        check_same_split(splits.info, out_dir)  # a resumed run trains on the photos it started with
    if ranks.is_main:  # every rank built the same split; one writes it, as with the config and checkpoints
        write_split(splits.info, out_dir)
    split = splits.train
    cache_dir = Path(config.feature_cache_dir).expanduser() if config.feature_cache_dir else out_dir / "features"
    dataset_key = {"data": config.data} if config.dataset == "synthetic" else {}

    if saved is not None:
        resumed = config_from_dict(saved["config"])
        config.model = resumed.model  # with the face-encoder architecture read from its weights
        config.model.image_weights = None  # the checkpoint holds the weights
        vocabulary = Vocabulary(saved["vocabulary"]) if saved["vocabulary"] is not None else None
        model = TGFRModel(config.model, vocabulary)
        model.load_state_dict(saved["model"])
        progress = saved["progress"]
    else:
        vocabulary = Vocabulary.from_captions(c for record in split.records for c in record.captions) \
            if config.model.text_encoder == "bilstm" else None
        model = TGFRModel(config.model, vocabulary)
        progress = {"step": steps_for(config)[0], "epochs_done": 0}
    model.to(device)
    if ranks.is_main:
        save_config(config, out_dir / "config.yaml")

    for position, name in enumerate(STEPS[STEPS.index(progress["step"]):]):
        step = _Step(name, model, config, TrainingViews(split, getattr(config, name).qualities), device)
        ranks.prepare_step(step, config.distributed)
        epochs_done = progress["epochs_done"] if position == 0 else 0
        if position == 0 and saved is not None and saved["trainer"] is not None:
            step.load_trainer_state(saved["trainer"])
        if epochs_done < step.settings.epochs and config.cache_frozen_features:
            # rank 0 encodes and writes the cache; the other ranks then map what it wrote
            ranks.main_first(lambda: step.use_cached_features(cache_dir, dataset_key))
        for epoch in range(epochs_done, step.settings.epochs):
            record = _run_epoch(step, epoch, config, device)
            if not ranks.is_main:
                continue
            with open(out_dir / LOG_NAME, "a") as log:
                log.write(json.dumps(record) + "\n")
            save_checkpoint({
                "config": config_to_dict(config),
                "vocabulary": vocabulary.words[2:] if vocabulary is not None else None,
                "num_classes": split.num_identities,
                "model": model.state_dict(),
                "progress": {"step": name, "epochs_done": epoch + 1},
                "trainer": step.trainer_state(),
            }, checkpoint_file)
    model.eval()
    ranks.close()
    return checkpoint_file


def _loss_and_backward(step: _Step, batch: dict, captions: list[str], amp) -> dict:
    chunk = getattr(step.settings, "grad_cache_chunk", 0)
    if not chunk:
        with amp:
            terms = step.loss(batch, captions)
        terms["loss"].backward()
        return terms
    terms = align_loss_and_backward(step, batch, captions, chunk, lambda: amp)
    step.distributed.average_gradients(p for group in step.optimizer.param_groups for p in group["params"])
    return terms


def _run_epoch(step: _Step, epoch: int, config: TrainConfig, device) -> dict:
    seed = _epoch_seed(config.seed, step.name, epoch)
    torch.manual_seed(seed)  # dropout and initialisation-free randomness of this epoch
    generator = torch.Generator().manual_seed(seed)
    lr = step.start_epoch(epoch)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.amp \
        else contextlib.nullcontext()
    totals: dict[str, float] = {}
    samples, started = 0, time.perf_counter()
    ranks = step.distributed
    batch_sampler = step.batch_sampler(generator, seed)
    loader = make_loader(step.data, batch_sampler, config.num_workers, device)
    for batch in tqdm(loader, total=len(batch_sampler), desc=f"{step.name} {epoch + 1}/{step.settings.epochs}",
                      disable=not (config.progress and ranks.is_main), leave=False):
        index = batch["index"]
        captions = step.captions(batch, generator)
        step.optimizer.zero_grad(set_to_none=True)
        terms = _loss_and_backward(step, batch, captions, amp)
        step.optimizer.step()
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach()) * len(index)
        samples += len(index)
    totals, samples = ranks.sum_over_ranks(totals, samples)
    return {
        "step": step.name,
        "epoch": epoch + 1,
        "epochs": step.settings.epochs,
        "lr": lr,
        **{key: value / max(samples, 1) for key, value in totals.items()},
        "samples": samples,
        "seconds": round(time.perf_counter() - started, 3),
    }
