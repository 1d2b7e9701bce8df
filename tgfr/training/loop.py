"""Two-step TGFR training (plus the face encoder when no pretrained one is given).

* step ``"image"`` (only without ``model.image_weights``): the iResNet with an
  ArcFace head on the training identities (SGD); frozen afterwards.
* step ``"align"``: caption encoder, word/global projections and IMIM with the
  FCAM loss (Adam; the caption encoder has its own learning rate).
* step ``"fusion"``: FCFM and the FLF baseline, each with its own ArcFace head
  (SGD, learning rate divided by 10 at the configured epochs).

Every epoch appends a JSON line to ``out_dir/log.jsonl`` and atomically rewrites
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

from ..models.fcam import FCAMLoss
from ..models.heads import ArcFaceHead
from ..models.text import Vocabulary
from ..models.tgfr import TGFRModel
from .checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict, config_to_dict, save_config
from .data import TrainingSet, load_training_split, materialise
from .distributed import Distributed
from .grad_cache import align_loss_and_backward

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

    def __init__(self, name: str, model: TGFRModel, config: TrainConfig, data: TrainingSet, device):
        self.name, self.model, self.config, self.data, self.device = name, model, config, data, device
        self.settings = getattr(config, name)
        self.frozen_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        s = self.settings
        embedding = model.config.embedding_size
        torch.manual_seed(_epoch_seed(config.seed, name, -1))  # a resumed run initialises the heads alike
        if name == "image":
            self.heads = ArcFaceHead(model.image_encoder.embedding_size, data.num_classes, s.arcface_scale,
                                     s.arcface_margin)
        elif name == "align":
            self.heads = FCAMLoss(model.config.dim, data.num_classes, s.weights, s.temperature, s.arcface_scale,
                                  s.arcface_margin, backend=config.ops_backend)
        else:
            self.heads = nn.ModuleDict({
                mode: ArcFaceHead(embedding, data.num_classes, s.arcface_scale, s.arcface_margin)
                for mode in ("tgfr", "flf")
            })
        self.heads.to(device)
        self.optimizer = self._optimizer()

    def _trained_modules(self) -> list[nn.Module]:
        m = self.model
        return {
            "image": [m.image_encoder],
            "align": [m.text_encoder, m.word_projection, m.global_projection, m.imim],
            "fusion": [m.fcfm, m.flf],
        }[self.name]

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
            return torch.optim.Adam(groups, weight_decay=s.weight_decay)
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

    @torch.no_grad()
    def cache_frozen_features(self, batch_size: int = 256) -> None:
        """Run the frozen face encoder once over the training images (the data are fixed tensors)."""
        if self.name == "image" or self.frozen_cache is not None:
            return
        self.model.image_encoder.eval()
        outputs = [
            self.model.image_encoder(self.data.images[i:i + batch_size].to(self.device))
            for i in range(0, len(self.data), batch_size)
        ]
        self.frozen_cache = tuple(torch.cat(parts) for parts in zip(*outputs))

    def _frozen_image(self, index: torch.Tensor):
        if self.frozen_cache is not None:
            idx = index.to(self.frozen_cache[0].device)
            return self.frozen_cache[0][idx], self.frozen_cache[1][idx]
        with torch.no_grad():
            return self.model.image_encoder(self.data.images[index].to(self.device))

    def loss(self, index: torch.Tensor, captions: list[str]) -> dict:
        labels = self.data.labels[index].to(self.device)
        if self.name == "image":
            feature, _ = self.model.image_encoder(self.data.images[index].to(self.device))
            return {"loss": self.heads(feature, labels)}
        feature, regions = self._frozen_image(index)
        if self.name == "align":
            return self.heads(self.model.project_image(feature, regions), self.model.encode_text(captions), labels)
        with torch.no_grad():
            image = self.model.project_image(feature, regions)
            text = self.model.encode_text(captions)
        terms = {mode: self.heads[mode](self.model.fuse(image, text, mode), labels) for mode in ("tgfr", "flf")}
        terms["loss"] = terms["tgfr"] + terms["flf"]
        return terms

    def trainer_state(self) -> dict:
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_trainer_state(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])


def _batches(count: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches; a last batch of one sample is dropped (BatchNorm and contrastive losses need two)."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        if len(index) > 1:
            yield index


def _check_resumable(config: TrainConfig, saved: dict) -> None:
    given = config_to_dict(config)
    model_given = {k: v for k, v in given["model"].items() if k not in _IMAGE_FIELDS_FROM_WEIGHTS}
    model_saved = {k: v for k, v in saved["model"].items() if k not in _IMAGE_FIELDS_FROM_WEIGHTS}
    differing = [f"model.{k}" for k in model_given if model_given[k] != model_saved.get(k)]
    differing += [key for key in ("seed", "data") if given[key] != saved[key]]
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
    split = load_training_split(config.data, config.model.image_size, config.seed)
    views: dict[tuple, TrainingSet] = {}  # steps training on the same qualities share one copy

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
        qualities = tuple(getattr(config, name).qualities)
        if qualities not in views:
            views[qualities] = materialise(split, qualities)
        step = _Step(name, model, config, views[qualities], device)
        ranks.prepare_step(step, config.distributed)
        epochs_done = progress["epochs_done"] if position == 0 else 0
        if position == 0 and saved is not None and saved["trainer"] is not None:
            step.load_trainer_state(saved["trainer"])
        if epochs_done < step.settings.epochs and config.cache_frozen_features:
            step.cache_frozen_features()
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


def _loss_and_backward(step: _Step, index: torch.Tensor, captions: list[str], amp) -> dict:
    chunk = getattr(step.settings, "grad_cache_chunk", 0)
    if not chunk:
        with amp:
            terms = step.loss(index, captions)
        terms["loss"].backward()
        return terms
    terms = align_loss_and_backward(step, index, captions, chunk, lambda: amp)
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
    batches = ranks.batches(len(step.data), step.settings.batch_size, seed) if ranks.enabled \
        else list(_batches(len(step.data), step.settings.batch_size, generator))
    for index in tqdm(batches, desc=f"{step.name} {epoch + 1}/{step.settings.epochs}",
                      disable=not (config.progress and ranks.is_main), leave=False):
        captions = step.data.sample_captions(index, generator)
        step.optimizer.zero_grad(set_to_none=True)
        terms = _loss_and_backward(step, index, captions, amp)
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
