"""iResNet face encoders (insightface ``iresnet`` / AdaFace ``net.py`` IR) and checkpoint loaders.

``IResNet`` is the insightface layout: a conv3x3-BN-PReLU stem, four stages of
``IBasicBlock`` (BN-conv-BN-PReLU-conv-BN plus shortcut), each halving the
resolution, and a BN-dropout-FC-BN head giving the global feature. ``forward``
returns ``(global [B, embedding_size], regions [B, C3, H/8, W/8])`` where the
regions are the output of the third stage: at 112x112 input and the default
width that is ``[B, 256, 14, 14]``, the regional features TGFR attends over.

Smaller variants (``base_width``, ``input_size``) train on a CPU: at 64x64 input
and ``base_width=16`` the regions are ``[B, 64, 8, 8]``; the model's region
projection (``tgfr.models.heads.IMIM``) maps any channel count to the shared
256-d space, so nothing downstream depends on the encoder's width.

Two public weight layouts load into the same module:

* ``load_arcface_iresnet``: insightface ``arcface_torch`` ``.pth`` state dicts
  (``conv1.weight``, ``bn1.*``, ``prelu.weight``, ``layer1.0.bn1.*``, ...,
  ``bn2.*``, ``fc.*``, ``features.*``), RGB input in ``[-1, 1]``.
* ``load_adaface_iresnet``: AdaFace Lightning ``.ckpt`` files (``state_dict``
  with ``model.``-prefixed ``net.py`` Backbone names: ``input_layer.*``,
  ``body.N.res_layer.*``, ``body.N.shortcut_layer.*``, ``output_layer.*``).
  AdaFace's IR differs in three places, kept as constructor options: the
  first block of a stage whose width does not change subsamples its shortcut
  with a parameter-free ``MaxPool2d(1, 2)``, both head BatchNorms have no
  affine parameters, and the network was trained on BGR input.
"""
from __future__ import annotations

import os
import re

import torch
from torch import nn

STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)
RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of iResNet (BN-conv-BN-PReLU-conv-BN + shortcut)."""

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample: nn.Module | None = None
        if in_channels != channels or (stride != 1 and shortcut == "conv"):
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels, eps=1e-5)
            )
        elif stride != 1:  # AdaFace: same width, subsample without parameters
            self.downsample = nn.MaxPool2d(1, stride)

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """iResNet face encoder returning the global feature and third-stage regions.

    Args:
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for iResNet-18.
        base_width: channels of the stem and first stage (64 in the published models).
        input_size: square input side; must be divisible by 16.
        embedding_size: width of the global feature (512).
        dropout: dropout before the FC head.
        shortcut: ``"conv"`` (insightface) or ``"maxpool"`` (AdaFace) for stride-2
            blocks that keep their width.
        head_affine: whether the head BatchNorms have affine parameters
            (insightface yes, AdaFace no).
        bgr_input: flip RGB input to BGR before the stem (AdaFace weights).
    """

    def __init__(
        self,
        layers=(2, 2, 2, 2),
        base_width: int = 64,
        input_size: int = 112,
        embedding_size: int = 512,
        dropout: float = 0.0,
        shortcut: str = "conv",
        head_affine: bool = True,
        bgr_input: bool = False,
    ):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16 (four stride-2 stages), got {input_size}")
        if shortcut not in ("conv", "maxpool"):
            raise ValueError(f"shortcut must be 'conv' or 'maxpool', got {shortcut!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give four stage depths, got {layers}")
        self.layers, self.base_width, self.input_size = tuple(layers), base_width, input_size
        self.variant = "adaface" if (shortcut, head_affine, bgr_input) == ("maxpool", False, True) else "arcface"
        self.bgr_input = bgr_input
        self.conv1 = nn.Conv2d(3, base_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width, eps=1e-5)
        self.prelu = nn.PReLU(base_width)
        in_channels = base_width
        for stage, (depth, mult) in enumerate(zip(layers, STAGE_WIDTH_MULTIPLIERS), start=1):
            channels = base_width * mult
            blocks = [IBasicBlock(in_channels, channels, 2, shortcut)]
            blocks += [IBasicBlock(channels, channels, 1, shortcut) for _ in range(depth - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            in_channels = channels
        self.region_channels = base_width * STAGE_WIDTH_MULTIPLIERS[2]
        self.region_size = input_size // 8
        final_size = input_size // 16
        self.bn2 = nn.BatchNorm2d(in_channels, eps=1e-5, affine=head_affine)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels * final_size * final_size, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5, affine=head_affine)
        if head_affine:  # insightface keeps the last BN's scale at 1
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False
        self.embedding_size = embedding_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"images must be [B, 3, {self.input_size}, {self.input_size}], got {list(images.shape)}"
            )
        x = images.flip(1) if self.bgr_input else images
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        regions = self.layer3(x)
        x = self.bn2(self.layer4(regions))
        x = self.fc(self.dropout(torch.flatten(x, 1)))
        return self.features(x), regions


def iresnet18(**kwargs) -> IResNet:
    return IResNet(RESNET_LAYERS[18], **kwargs)


# constructor options of the two published variants
VARIANTS = {
    "arcface": {"shortcut": "conv", "head_affine": True, "bgr_input": False},
    "adaface": {"shortcut": "maxpool", "head_affine": False, "bgr_input": True},
}


# ---------------------------------------------------------------- checkpoint loading


def _load_strict(model: nn.Module, state: dict, source: str) -> nn.Module:
    """Load ``state`` into ``model``, naming every missing or unexpected key on mismatch."""
    expected = model.state_dict()
    # BatchNorm step counters are absent from some exports and never used in eval
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source} does not match {type(model).__name__}:\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(wrong_shape)}): {wrong_shape}"
        )
    model.load_state_dict(state)
    return model


def _read_checkpoint(path) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint path {str(path)!r} is not a file")
    return torch.load(path, map_location="cpu", weights_only=True)


def _infer_layers(keys, pattern: str) -> tuple[int, ...]:
    """Stage depths from block indices, e.g. ``layer3.1.`` -> stage 3 has 2 blocks."""
    depth = {}
    for key in keys:
        m = re.match(pattern, key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depth[stage] = max(depth.get(stage, 0), block + 1)
    return tuple(depth.get(s, 0) for s in range(1, 5))


def load_arcface_iresnet(path, input_size: int = 112, **kwargs) -> IResNet:
    """An ``IResNet`` with insightface ArcFace weights from a ``.pth`` state dict.

    Depth and width are read from the checkpoint (any of iResNet-18/34/50/100).
    """
    state = _read_checkpoint(path)
    if "conv1.weight" not in state:
        raise ValueError(f"{path}: not an insightface iresnet state dict (no 'conv1.weight' key)")
    layers = _infer_layers(state, r"layer(\d)\.(\d+)\.")
    model = IResNet(
        layers,
        base_width=state["conv1.weight"].shape[0],
        input_size=input_size,
        embedding_size=state["fc.weight"].shape[0] if "fc.weight" in state else 512,
        **kwargs,
    )
    return _load_strict(model, dict(state), f"ArcFace checkpoint {path}")


# AdaFace Backbone sub-module index -> IResNet name
_ADAFACE_RES_LAYER = {"0": "bn1", "1": "conv1", "2": "bn2", "3": "prelu", "4": "conv2", "5": "bn3"}
_ADAFACE_STEM = {"0": "conv1", "1": "bn1", "2": "prelu"}
_ADAFACE_HEAD = {"0": "bn2", "3": "fc", "4": "features"}


def adaface_to_iresnet_state(state: dict, layers) -> dict:
    """Rename AdaFace ``net.py`` Backbone keys (``model.`` prefix optional) to ``IResNet`` keys."""
    block_names = [f"layer{s + 1}.{b}" for s, depth in enumerate(layers) for b in range(depth)]
    renamed = {}
    for key, value in state.items():
        name = key[len("model."):] if key.startswith("model.") else key
        parts = name.split(".")
        if parts[0] == "input_layer" and parts[1] in _ADAFACE_STEM:
            new = ".".join([_ADAFACE_STEM[parts[1]], *parts[2:]])
        elif parts[0] == "output_layer" and parts[1] in _ADAFACE_HEAD:
            new = ".".join([_ADAFACE_HEAD[parts[1]], *parts[2:]])
        elif parts[0] == "body" and int(parts[1]) < len(block_names):
            block = block_names[int(parts[1])]
            if parts[2] == "res_layer" and parts[3] in _ADAFACE_RES_LAYER:
                new = ".".join([block, _ADAFACE_RES_LAYER[parts[3]], *parts[4:]])
            elif parts[2] == "shortcut_layer":
                new = ".".join([block, "downsample", *parts[3:]])
            else:
                new = name
        else:
            new = name  # left as is: reported as unexpected by the strict check
        renamed[new] = value
    return renamed


def load_adaface_iresnet(path, layers=RESNET_LAYERS[18], input_size: int = 112) -> IResNet:
    """An ``IResNet`` (AdaFace variant, BGR input) with weights from an AdaFace ``.ckpt``.

    ``layers`` gives the stage depths of the checkpoint's IR network (IR-18 by
    default; ``RESNET_LAYERS[50]`` for IR-50, ...).
    """
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # AdaFace margin head
    if "model.input_layer.0.weight" not in state and "input_layer.0.weight" not in state:
        raise ValueError(f"{path}: not an AdaFace checkpoint (no 'model.input_layer.0.weight' key)")
    stem = state.get("model.input_layer.0.weight", state.get("input_layer.0.weight"))
    fc = state.get("model.output_layer.3.weight", state.get("output_layer.3.weight"))
    model = IResNet(
        tuple(layers),
        base_width=stem.shape[0],
        input_size=input_size,
        embedding_size=fc.shape[0] if fc is not None else 512,
        **VARIANTS["adaface"],
    )
    return _load_strict(model, adaface_to_iresnet_state(state, layers), f"AdaFace checkpoint {path}")
