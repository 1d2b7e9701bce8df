"""Every training objective takes a finite step under CUDA's autocast policy, here emulated on the CPU.

One step (forward under autocast, backward outside it, as training does) of step 0 (face encoder +
ArcFace), the align step with each objective, the fusion step with each fusion head and X-Modal,
with float32 and with bfloat16 inputs (photos, cached face-encoder features, sentence features).
The sizes are the smoke and tiny presets'.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from cuda_autocast import CUDA_POLICY_OPS, cuda_autocast, ops_with_autocast_kernel

from tgfr.models import (
    FUSION_MODES,
    ArcFaceHead,
    CaptionIdentityLoss,
    CGFRLoss,
    CMPCLoss,
    FCAMLoss,
    ModelConfig,
    TGFRModel,
    Vocabulary,
)
from tgfr.ops import info_nce, word_region_loss
from tgfr.retrieval import XModalModel, graded_mnrl

# the smoke preset's model
SMOKE_MODEL = dict(image_size=32, image_width=8, text_embedding_dim=16, text_hidden=16, dim=32, embedding_size=32,
                   max_words=16, fusion_heads=2)
CAPTIONS = [
    "A young woman with long blond hair and blue eyes.",
    "An old man with a grey beard, wearing glasses.",
    "She has brown hair, a small nose and is smiling.",
    "The middle-aged man has short black hair and a big nose.",
    "A smiling woman with blond hair.",
    "He has a grey beard and glasses.",
    "A woman with brown hair and a small nose.",
    "A man with black hair and a big nose.",
]
# two views per subject (row K + i shows the subject of row i), as imcl="views" needs
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
NUM_CLASSES = 4
INPUT_DTYPES = [torch.float32, torch.bfloat16]
ids = [str(d).removeprefix("torch.") for d in INPUT_DTYPES]


def _model() -> TGFRModel:
    torch.manual_seed(0)
    return TGFRModel(ModelConfig(**SMOKE_MODEL, fusions=list(FUSION_MODES)), Vocabulary.from_captions(CAPTIONS))


def _images(dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(len(LABELS), 3, 32, 32, generator=generator) * 2 - 1).to(dtype)


def _frozen_image(model: TGFRModel, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen face encoder's outputs, as the caption steps compute (or cache) them, in ``dtype``."""
    model.eval()
    with torch.no_grad(), cuda_autocast():
        feature, regions = model.image_encoder(_images(dtype))
    return feature.to(dtype), regions.to(dtype)


def _check_step(terms: dict, *modules) -> None:
    """Back-propagate ``terms["loss"]`` (outside autocast, as training does); every term and gradient is finite."""
    terms["loss"].backward()
    for name, value in terms.items():
        assert math.isfinite(float(value.detach())), f"loss term {name} is {float(value)}"
    grads = [p.grad for module in modules for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "a trained parameter got no gradient"
    for grad in grads:
        assert torch.isfinite(grad).all()


def test_emulation_applies_cuda_lists_and_stops_in_islands():
    # the lists are exactly the ops this torch build registers a CUDA autocast kernel for
    assert CUDA_POLICY_OPS == ops_with_autocast_kernel("AutocastCUDA")
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with cuda_autocast():
        products = F.linear(x, w)
        assert products.dtype == torch.bfloat16
        assert torch.acos(products.clamp(-0.5, 0.5)).dtype == torch.float32  # the CPU's own policy keeps bfloat16
        assert products.softmax(-1).dtype == torch.float32
        with torch.autocast("cpu", enabled=False):
            assert F.linear(x, w).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU policy is back
        assert torch.acos(products.clamp(-0.5, 0.5)).dtype == torch.bfloat16


def _embeddings(dtype) -> tuple[dict, dict]:
    """Encoded images and captions as the loss heads take them (unit vectors), rounded to bfloat16 and
    given in ``dtype``."""
    generator = torch.Generator().manual_seed(3)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1).bfloat16().to(dtype)

    batch = len(LABELS)
    image = {"feature": unit(batch, 48), "global": unit(batch, 32), "regions": unit(batch, 16, 32),
             "region_shape": (4, 4)}
    text = {"words": unit(batch, 6, 32), "mask": torch.arange(6) < torch.tensor([6, 5, 4, 3, 6, 5, 4, 3])[:, None],
            "caption": unit(batch, 32)}
    return image, text


def _graded_mnrl(_, image, text):
    hard = (image["global"][4:], LABELS[4:] + NUM_CLASSES)
    return graded_mnrl(text["caption"][:4], image["global"][:4], LABELS[:4], {"hard": hard})


# (the head, its loss on encoded images and captions)
LOSS_HEADS = {
    "arcface": (lambda: ArcFaceHead(32, NUM_CLASSES), lambda head, image, text: head(image["global"], LABELS)),
    "cmpc": (lambda: CMPCLoss(32, NUM_CLASSES),
             lambda head, image, text: head(image["global"], text["caption"], LABELS)),
    "cgfr": (lambda: CGFRLoss(32, NUM_CLASSES), lambda head, image, text: head(image, text, LABELS)["loss"]),
    "fcam": (lambda: FCAMLoss(32, NUM_CLASSES, imcl="views"),
             lambda head, image, text: head(image, text, LABELS)["loss"]),
    "graded_mnrl": (lambda: None, _graded_mnrl),
}


@pytest.mark.parametrize("name", list(LOSS_HEADS))
def test_loss_heads_compute_in_float32_whatever_the_autocast_and_inputs(name):
    """A loss head is a float32 island: bfloat16 inputs are cast on entry and autocast stops at it, so
    both give the loss of the same values in float32 without autocast."""
    build, loss_of = LOSS_HEADS[name]
    torch.manual_seed(0)
    head = build()
    expected = loss_of(head, *_embeddings(torch.float32))
    from_bfloat16 = loss_of(head, *_embeddings(torch.bfloat16))
    with cuda_autocast():
        under_autocast = loss_of(head, *_embeddings(torch.float32))
    for loss in (from_bfloat16, under_autocast):
        assert loss.dtype == torch.float32
        assert_close(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=ids)
def test_face_encoder_step(dtype):
    model = _model()
    encoder, head = model.image_encoder, ArcFaceHead(model.image_encoder.embedding_size, NUM_CLASSES)
    with cuda_autocast():
        feature, _ = encoder(_images(dtype))
        terms = {"loss": head(feature, LABELS)}
    _check_step(terms, encoder, head)


ALIGN_LOSSES = {
    "fcam-views": lambda: FCAMLoss(32, NUM_CLASSES, imcl="views", scaling="paper", mask_same_identity=False),
    "fcam-local_global": lambda: FCAMLoss(32, NUM_CLASSES, imcl="local_global"),
    "id": lambda: CaptionIdentityLoss(32, NUM_CLASSES),
    "cgfr": lambda: CGFRLoss(32, NUM_CLASSES),
}


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=ids)
@pytest.mark.parametrize("objective", list(ALIGN_LOSSES))
def test_align_step(objective, dtype):
    model = _model()
    feature, regions = _frozen_image(model, dtype)
    loss = ALIGN_LOSSES[objective]()
    trained = [getattr(model, part) for part in loss.trained]
    for module in trained:
        module.train()
    with cuda_autocast():
        terms = loss(model.project_image(feature, regions), model.encode_text(CAPTIONS), LABELS)
    _check_step(terms, loss, *trained)


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=ids)
@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_step(mode, dtype):
    model = _model()
    feature, regions = _frozen_image(model, dtype)
    fusion, head = model.fusion_module(mode).train(), ArcFaceHead(SMOKE_MODEL["embedding_size"], NUM_CLASSES)
    with cuda_autocast():
        with torch.no_grad():
            image, text = model.project_image(feature, regions), model.encode_text(CAPTIONS)
        terms = {"loss": head(model.fuse(image, text, mode), LABELS)}
    _check_step(terms, fusion, head)


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=ids)
def test_xmodal_step(dtype):
    """Text and composed queries against their faces plus graded negatives, and the two baseline heads on
    the text positives' features (gradient cut from the encoder), at the tiny preset's sizes."""
    torch.manual_seed(0)
    model = XModalModel("iresnet", input_size=32, width=4, text_size=24, dim=32).train()
    generator = torch.Generator().manual_seed(2)
    batch, negatives = 4, 2
    faces = (torch.rand(3 * batch + 2 * negatives, 3, 32, 32, generator=generator) * 2 - 1).to(dtype)
    sentences = F.normalize(torch.randn(2 * batch, 24, generator=generator), dim=1).to(dtype)
    tokens, mask = torch.randn(batch, 5, 24, generator=generator).to(dtype), torch.ones(batch, 5, dtype=torch.bool)
    ids = torch.arange(batch)
    with cuda_autocast():
        pooled, cells = model.encode_faces(faces)
        positives, references, targets, easy, hard = model.project_faces(pooled).split(
            [batch, batch, batch, negatives, negatives])
        grades = {"easy": (easy, ids[:negatives] + batch), "hard": (hard, ids[:negatives] + 2 * batch)}
        text = graded_mnrl(model.embed_texts(sentences[:batch]), positives, ids, grades)
        composed = graded_mnrl(model.compose(references, sentences[batch:]), targets, ids, grades)
        clip = info_nce(model.clip_texts(sentences[:batch]), model.clip_faces(pooled[:batch].detach()),
                        torch.exp(-model.clip_log_scale), class_ids=ids)
        word_region = sum(word_region_loss(model.words(tokens), model.regions(cells[:batch].detach()), mask,
                                           class_ids=ids))
        terms = {"text": text, "composed": composed, "clip": clip, "word_region": word_region,
                 "loss": text + composed + clip + word_region}
    _check_step(terms, model)
