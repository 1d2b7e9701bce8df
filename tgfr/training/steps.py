"""The three TGFR training steps as engine stages: what each trains, with which optimizer and which loss.

* :class:`ImageStep` (only without ``model.image_weights``): the iResNet with an ArcFace head on
  the training identities (SGD); frozen afterwards.
* :class:`AlignStep`: caption encoder, word/global projections and IMIM with the FCAM loss (Adam;
  the caption encoder has its own learning rate), or a baseline's caption objective
  (:mod:`tgfr.training.objectives`); gradient caching with ``align.grad_cache_chunk``.
* :class:`FusionStep`: the fusion heads of ``fusion.modes`` (FCFM, FLF, CGFR-style), each with its
  own ArcFace head; the heads on Adam (or SGD), the ArcFace heads on SGD, learning rates divided by 10
  at the configured epochs.

The caption steps read the frozen face encoder's outputs from the on-disk cache when
``cache_frozen_features`` is set (:mod:`tgfr.training.features`), and draw one caption per
photo (or two views per subject for the paper's IMCL) with the epoch's generator.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine import Epoch, Optimizers, Stage, StageRunner
from ..losses import InfoNCELoss, WordRegionLoss
from ..models.heads import ArcFaceHead
from ..models.tgfr import TGFRModel
from .config import SGDStepConfig, TrainConfig
from .data import FeatureViews, TrainingViews, make_batch_sampler, make_loader, sample_captions
from .features import cached_features
from .grad_cache import align_loss_and_backward
from .objectives import build_align_loss, flipped_rows, second_view_captions
from .sampler import SubjectPairBatchSampler


def step_lr(base_lr: float, milestones, epoch: int, gamma: float = 1.0) -> float:
    """The learning rate of ``epoch``: ``base_lr`` times ``gamma`` per epoch, divided by 10 at every
    milestone reached."""
    return base_lr * gamma ** epoch * 0.1 ** sum(epoch >= m for m in milestones)


class CaptionedBatches:
    """An epoch's batches from ``loader`` (``count`` of them), each with the captions ``draw(batch)``
    picks for it under ``"text"``; drawn in batch order as the batches arrive."""

    def __init__(self, loader, count: int, draw):
        self.loader, self.count, self.draw = loader, count, draw

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for batch in self.loader:
            if self.draw is not None:
                batch["text"] = self.draw(batch)
            yield batch


class TGFRStep(Stage):
    """What the TGFR steps share: the model, the step's views of the training split, its loss heads
    and its optimizer. A subclass names its ``settings``, the modules it trains, its heads, its
    optimizer and its batch loss."""

    def __init__(self, model: TGFRModel, config: TrainConfig, settings, split, device,
                 feature_cache: tuple[Path, dict] | None = None):
        self.model, self.config, self.settings, self.device = model, config, settings, device
        self.epochs = settings.epochs
        self.data = TrainingViews(split, settings.qualities)
        self.feature_cache = feature_cache
        self.heads = self.build_heads(model, self.data.num_classes).to(device)
        self.optimizer = self.build_optimizer()

    def build_heads(self, model: TGFRModel, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def trained_modules(self) -> list[nn.Module]:
        """The parts of the model this step trains."""
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_milestones(self) -> list[int]:
        """The epochs at which the learning rates are divided by 10."""
        return self.settings.lr_milestones

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.trained_modules() for p in module.parameters() if p.requires_grad]

    def modules(self) -> list[nn.Module]:
        return [*self.trained_modules(), self.heads]

    def start_epoch(self, epoch: Epoch) -> CaptionedBatches:
        self.model.eval()  # frozen parts keep their BatchNorm statistics and drop no units
        for module in self.trained_modules():
            module.train()
        self.heads.train()
        for group in self.optimizer.param_groups:
            group["lr"] = step_lr(group["base_lr"], self.lr_milestones(), epoch.number, group.get("gamma", 1.0))
        sampler = self.batch_sampler(epoch)
        loader = make_loader(self.data, sampler, self.config.num_workers, self.device)
        return CaptionedBatches(loader, len(sampler), self.caption_drawer(epoch.generator))

    def batch_sampler(self, epoch: Epoch):
        """This epoch's batches, shuffled (this rank's part of them under torchrun)."""
        if epoch.ranks.enabled:
            return epoch.ranks.batch_sampler(len(self.data), self.settings.batch_size, epoch.seed)
        return make_batch_sampler(self.data, self.settings.batch_size, epoch.generator)

    def caption_drawer(self, generator: torch.Generator):
        """How a batch's captions are drawn (None: the step reads no caption)."""
        return None

    def labels(self, batch: dict) -> torch.Tensor:
        return batch["label"].to(self.device, non_blocking=True)

    def use_process_group(self, group) -> None:
        for module in self.heads.modules():
            if isinstance(module, (InfoNCELoss, WordRegionLoss)):
                module.group = group

    def state_dict(self) -> dict:
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])


def _sgd(parameters, settings: SGDStepConfig) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": parameters, "lr": settings.lr, "base_lr": settings.lr}],
                           momentum=settings.momentum, weight_decay=settings.weight_decay)


class ImageStep(TGFRStep):
    """Step 0: the face encoder under an ArcFace head, SGD."""

    name = "image"

    def __init__(self, model, config: TrainConfig, split, device, feature_cache=None):
        super().__init__(model, config, config.image, split, device)

    def build_heads(self, model, num_classes):
        s = self.settings
        return ArcFaceHead(model.image_encoder.embedding_size, num_classes, s.arcface_scale, s.arcface_margin)

    def trained_modules(self):
        return [self.model.image_encoder]

    def build_optimizer(self):
        return _sgd(self.trained_parameters() + list(self.heads.parameters()), self.settings)

    def loss(self, batch):
        feature, _ = self.model.image_encoder(batch["image"].to(self.device, non_blocking=True))
        return {"loss": self.heads(feature, self.labels(batch))}


class CaptionStep(TGFRStep):
    """A step on captions and the frozen face encoder's outputs (align, fusion)."""

    def prepare(self) -> None:
        """Train on the frozen face encoder's cached outputs instead of photos."""
        if self.feature_cache is None or isinstance(self.data, FeatureViews):
            return
        cache_dir, dataset_key = self.feature_cache
        c = self.config
        features, _ = cached_features(self.model.image_encoder, self.data, cache_dir, c.dataset, dataset_key,
                                      num_workers=c.num_workers, device=self.device, progress=c.progress)
        self.data = FeatureViews(self.data, features)

    def caption_drawer(self, generator):
        return lambda batch: sample_captions(batch["captions"], generator)

    def frozen_image(self, batch: dict):
        """The frozen face encoder's (global feature, regions) of a batch, cached or computed."""
        if "global" in batch:
            return (batch["global"].to(self.device, non_blocking=True),
                    batch["regions"].to(self.device, non_blocking=True))
        with torch.no_grad():
            return self.model.image_encoder(batch["image"].to(self.device, non_blocking=True))


class AlignStep(CaptionStep):
    """Step 1: caption encoder, projections and IMIM under the align objective; Adam or AdamW, the
    caption encoder at its own learning rate (0: frozen)."""

    name = "align"

    def __init__(self, model, config: TrainConfig, split, device, feature_cache=None):
        super().__init__(model, config, config.align, split, device, feature_cache)

    def build_heads(self, model, num_classes):
        return build_align_loss(self.settings, model.config.dim, num_classes, self.config.ops_backend)

    @property
    def frozen_text(self) -> bool:
        return self.config.caption_lr == 0

    def trained_modules(self):
        return [getattr(self.model, part) for part in self.heads.trained
                if not (self.frozen_text and part == "text_encoder")]

    def lr_milestones(self):
        return []

    def build_optimizer(self):
        s, text_lr = self.settings, self.config.caption_lr
        trained = self.trained_parameters()
        text = {id(p) for p in self.model.text_encoder.parameters()}
        head_decay = s.weight_decay if s.head_weight_decay is None else s.head_weight_decay
        groups = [
            {"params": [p for p in trained if id(p) in text], "lr": text_lr, "base_lr": text_lr},
            {"params": [p for p in trained if id(p) not in text] + list(self.heads.parameters()),
             "lr": s.lr, "base_lr": s.lr, "weight_decay": head_decay, "betas": tuple(s.head_betas),
             "gamma": s.lr_gamma},
        ]
        adam = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        return adam(groups, weight_decay=s.weight_decay)

    def batch_sampler(self, epoch):
        """Two views per subject for eq. 7's IMCL, else shuffled."""
        if not self.settings.pairs_views:
            return super().batch_sampler(epoch)
        batches = SubjectPairBatchSampler(self.data.labels, self.settings.batch_size, epoch.generator)
        return epoch.ranks.pair_batches(batches) if epoch.ranks.enabled else batches

    def caption_drawer(self, generator):
        if not self.settings.pairs_views:
            return super().caption_drawer(generator)
        return lambda batch: second_view_captions(batch["captions"], batch["index"], generator)

    def frozen_image(self, batch):
        """In a two-view batch, the second view of a one-sample subject is its mirror image."""
        feature, regions = super().frozen_image(batch)
        if self.settings.pairs_views:
            flip = flipped_rows(batch["index"])
            if flip.any():
                photos = torch.stack([self.data.photo(int(i)) for i in batch["index"][flip]])
                with torch.no_grad():
                    mirrored = self.model.image_encoder(photos.flip(-1).to(self.device))
                rows = flip.nonzero().flatten().to(feature.device)
                feature, regions = feature.index_copy(0, rows, mirrored[0]), regions.index_copy(0, rows, mirrored[1])
        return feature, regions

    def loss(self, batch):
        feature, regions = self.frozen_image(batch)
        return self.heads(self.model.project_image(feature, regions), self.model.encode_text(batch["text"]),
                          self.labels(batch))

    def backward(self, batch, runner: StageRunner):
        """With ``grad_cache_chunk``: gradient caching, which bypasses DDP's forward (so the gradients are
        averaged over the ranks here)."""
        if not self.settings.grad_cache_chunk:
            return super().backward(batch, runner)
        terms = align_loss_and_backward(self, batch, self.settings.grad_cache_chunk, runner.autocast)
        runner.average_gradients()
        return terms


class FusionStep(CaptionStep):
    """Step 2: the fusion heads of ``fusion.modes``, each under its own ArcFace head (SGD); the fusion
    heads on ``fusion.fusion_optimizer``."""

    name = "fusion"

    def __init__(self, model, config: TrainConfig, split, device, feature_cache=None):
        super().__init__(model, config, config.fusion, split, device, feature_cache)

    def build_heads(self, model, num_classes):
        s = self.settings
        return nn.ModuleDict({mode: ArcFaceHead(model.config.embedding_size, num_classes, s.arcface_scale,
                                                s.arcface_margin) for mode in s.modes})

    def trained_modules(self):
        return [self.model.fusion_module(mode) for mode in self.settings.modes]

    def build_optimizer(self):
        s = self.settings
        if s.fusion_optimizer == "sgd":
            return _sgd(self.trained_parameters() + list(self.heads.parameters()), s)
        fusion = torch.optim.Adam([{"params": self.trained_parameters(), "lr": s.fusion_lr, "base_lr": s.fusion_lr}],
                                  weight_decay=s.fusion_weight_decay)
        return Optimizers(fusion, _sgd(list(self.heads.parameters()), s))

    def loss(self, batch):
        feature, regions = self.frozen_image(batch)
        with torch.no_grad():
            image = self.model.project_image(feature, regions)
            text = self.model.encode_text(batch["text"])
        labels = self.labels(batch)
        terms = {mode: self.heads[mode](self.model.fuse(image, text, mode), labels) for mode in self.settings.modes}
        terms["loss"] = sum(terms.values())
        return terms


STEPS = {step.name: step for step in (ImageStep, AlignStep, FusionStep)}
