"""X-Modal training on the engine: the graded-MNRL stage, its data and model.

One step draws a batch of text queries and a batch of composed queries with their graded
negatives (:class:`tgfr.retrieval.data.GradedBatches`), runs every face of the step
through the encoder at once, and minimises

    MNRL(text -> face) + composed_weight * MNRL(reference + change -> face)
    + attribute_weight * (true attributes read from the face embeddings)
    + baseline_weight * (CLIP-style InfoNCE + TGFR word-region loss)

where the baseline heads see the face features with their gradient cut, so they are
measured beside the X-Modal model without changing it. The learning rate decays along a
cosine over all steps. The run directory holds what every engine run holds (``config.yaml``,
``checkpoint.pt``, ``log.jsonl``; ``resume=True`` continues after the last finished epoch) and
the caches of the rendered faces and of the frozen sentence features.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from .. import config as configs
from ..engine import CheckpointError, Engine, EngineSettings, Epoch, Stage, Training, checkpoint_path, load_weights
from ..engine import read_checkpoint as read_run_checkpoint
from ..ops import info_nce, word_region_loss
from .config import XModalConfig
from .data import GradedBatches, build_celeba_dialog_splits, build_retrieval_splits, images_to_tensor, state_ids
from .loss import AttributeLoss, active_grades, graded_mnrl
from .models import XModalModel

KIND, COMMAND = "xmodal", "tgfr xmodal train"
# what a resumed run may change: how it is shown, where it reads from, its threads and op backend (the
# backends compute the same function); its epochs may not, since the learning rate decays over all of them
RUN_SETTINGS = ("progress", "log_interval", "threads", "backend", "data_root", "skip_bad")


def all_captions(splits) -> list[str]:
    return [c for s in splits.values() for photo in s.faces.captions for c in photo] + \
        [c for s in splits.values() for c in s.changes.captions]


def prepare(config: XModalConfig, cache_dir):
    """The splits and the frozen sentence features of all their captions (both cached in ``cache_dir``)."""
    from .text import cached_text_features

    if config.dataset == "synthetic":
        splits = build_retrieval_splits(config.synthetic(), config.pairs_per_identity, cache_dir,
                                        config.train_pairs_per_identity)
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


def _batch_loss(model, config: XModalConfig, split, text, batch: dict, attributes: AttributeLoss | None = None
                ) -> dict[str, torch.Tensor]:
    """The loss terms of one step's text and composed queries (``batch``: their indices and negatives)."""
    faces, changes = split.faces, split.changes
    tb, cb = batch["text"], batch["composed"]
    # one encoder pass over every face of the step, in segments
    segments = {"text_pos": faces.images[tb["photos"]], "ref": changes.reference[cb["pairs"]],
                "target": changes.target[cb["pairs"]]}
    for g, rows in tb["negatives"].items():
        segments[f"text_{g}"] = faces.images[rows]
    for g, rows in cb["negatives"].items():
        segments[f"comp_{g}"] = changes.other_before[rows] if g == "hard" else changes.target[rows]
    sizes = [len(v) for v in segments.values()]
    pooled, cells = model.encode_faces(images_to_tensor(np.concatenate(list(segments.values()))))
    embedded = dict(zip(segments, model.project_faces(pooled).split(sizes)))

    ids = torch.as_tensor(faces.identities[tb["photos"]])
    text_negatives = {g: (embedded[f"text_{g}"], torch.as_tensor(faces.identities[tb["negatives"][g]]))
                      for g in tb["negatives"]}
    views = [text.batch(captions) for captions in tb["captions"]]
    loss_text = sum(graded_mnrl(model.embed_texts(v), embedded["text_pos"], ids, text_negatives, config.scale,
                                config.backend) for v in views) / len(views)
    captions = views[0]

    pair_ids = changes.identities[cb["pairs"]]
    composed_negatives = {g: (embedded[f"comp_{g}"], state_ids(changes.identities[cb["negatives"][g]], g != "hard"))
                          for g in cb["negatives"]}
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
    terms = {"text": loss_text, "composed": loss_composed, "clip": loss_clip, "word_region": loss_word_region}
    if attributes is not None:  # the text positives' and the change targets' true attributes
        terms["attributes"] = attributes(torch.cat([embedded["text_pos"], embedded["target"]]),
                                         [faces.attributes[i] for i in tb["photos"]] +
                                         [changes.after_attributes[p] for p in cb["pairs"]])
        total = total + config.attribute_weight * terms["attributes"]
    return {"loss": total, **terms}


class XModalStage(Stage):
    """The one stage of an X-Modal run: the whole model (and the attribute read-outs, when weighted), AdamW,
    a cosine learning rate per step."""

    name = "xmodal"

    def __init__(self, model: XModalModel, config: XModalConfig, split, text):
        self.model, self.config, self.text = model, config, text
        self.batches = GradedBatches(split, config.seed)
        self.epochs = config.epochs
        self.attributes = None
        if config.attribute_weight > 0:
            names = config.attribute_names or sorted({name for change in split.changes.changes for name in change})
            self.attributes = AttributeLoss(split.faces.attributes + split.changes.after_attributes, config.dim,
                                            names, config.scale)
        self.optimizer = torch.optim.AdamW([p for m in self.modules() for p in m.parameters()], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.steps = config.steps_per_epoch or max(1, len(self.batches.people) // config.batch_size)
        self.total_steps = max(1, config.epochs * self.steps)
        self.step, self.grades = 0, ()

    def modules(self):
        return [self.model] + ([self.attributes] if self.attributes is not None else [])

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.attributes is not None:
            state["attributes"] = self.attributes.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.attributes is not None:
            self.attributes.load_state_dict(state["attributes"])

    def _set_lr(self) -> None:
        """The learning rate of step ``self.step``: cosine decay from ``lr`` to 0 over the run."""
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.step, self.total_steps) / self.total_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor

    def start_epoch(self, epoch: Epoch) -> list[dict]:
        """The epoch's batches: indices drawn from ``(seed, epoch)``, so a resumed run draws the same."""
        c = self.config
        self.model.train()
        self.step = epoch.number * self.steps
        self._set_lr()
        rng = np.random.default_rng([c.seed, epoch.number, 11])
        batches = []
        for step in range(self.step, self.step + self.steps):
            grades = active_grades(c.negatives, step / self.total_steps, c.grade_starts)
            # the same person's second before photo: from the first step when before_negative asks for it
            composed_grades = tuple(dict.fromkeys(grades + ("hard",) * c.before_negative))
            batches.append({"grades": grades, "text": self.batches.text_batch(rng, c.batch_size, grades, c.text_views),
                            "composed": self.batches.composed_batch(rng, c.batch_size, composed_grades)})
        return batches

    def loss(self, batch):
        self.grades = batch["grades"]
        return _batch_loss(self.model, self.config, self.batches.split, self.text, batch, self.attributes)

    def after_optimizer_step(self) -> None:
        self.step += 1
        self._set_lr()

    def count(self, batch) -> int:
        return len(batch["text"]["photos"])

    def epoch_log(self) -> dict:
        return {"grades": list(self.grades)}


class XModalTraining(Training):
    """An X-Modal run on the engine: the splits, the frozen sentence features and the model."""

    kind, command, stages = KIND, COMMAND, (XModalStage.name,)
    run_settings = RUN_SETTINGS

    def __init__(self, config: XModalConfig):
        self.config = copy.deepcopy(config)
        self.settings = EngineSettings(seed=config.seed, device="cpu", progress=config.progress,
                                       log_interval=config.log_interval)

    def epochs(self, stage: str) -> int:
        return self.config.epochs

    def prepare(self, saved, device, ranks, out_dir: Path) -> None:
        splits, self.text = prepare(self.config, out_dir)
        self.split = splits["train"]
        self.model = build_model(self.config, self.text.sentences.shape[1])
        if saved is not None:
            load_weights(self.model, saved, out_dir)

    def build_stage(self, name: str) -> XModalStage:
        return XModalStage(self.model, self.config, self.split, self.text)

    def state(self) -> dict:
        return {"text_size": self.text.sentences.shape[1], "model": self.model.state_dict()}


def read_run(run_dir) -> dict:
    """The checkpoint of an X-Modal run directory (or checkpoint file)."""
    return read_run_checkpoint(run_dir, KIND, COMMAND)


def load_run(run_dir) -> tuple[XModalConfig, XModalModel, dict]:
    """The config and trained model (eval mode) of a run directory or checkpoint file."""
    state = read_run(run_dir)
    config = configs.from_dict(XModalConfig, state["config"])
    if "text_size" not in state:
        raise CheckpointError(f"{checkpoint_path(run_dir)} is damaged: it holds no text_size")
    model = build_model(config, state["text_size"])
    load_weights(model, state, run_dir)
    return config, model.eval(), state


def train_xmodal(config: XModalConfig, out, resume: bool = False, log=print) -> Path:
    """Train ``config`` into the directory ``out``; returns the checkpoint path. ``log`` gets one line
    per finished epoch. A resumed run may change only :data:`RUN_SETTINGS` (its learning rate decays over
    all its epochs, so more epochs would make another run)."""
    def report(record: dict) -> None:
        values = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                  if k not in ("step", "epoch", "epochs")}
        log(f"epoch {record['epoch']}/{record['epochs']}  " + "  ".join(f"{k} {v}" for k, v in values.items()))

    return Engine(XModalTraining(config), out, resume, on_epoch=report, log=log).run()
