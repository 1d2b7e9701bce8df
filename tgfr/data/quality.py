"""Image-quality levels: colour cast and contrast loss, Gaussian blur, down- then up-sampling,
additive noise, JPEG.

Strengths are given for a 112-pixel image and scale with the image size, so a 64-pixel
image at ``bad`` loses the same share of its detail as a 112-pixel one. Each strength is
drawn per image from a range (``rng``), so one level is a spread of degradations, not a
single filter. At ``very_bad`` the face is an eighth of its resolution, heavily blurred,
noisy, blocky and colour-shifted: landmark geometry and exact skin and hair shades are
gone, while large colour regions (hair colour, beard, hat, dark frames) partly survive.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

QUALITY_LEVELS: tuple[str, ...] = ("normal", "poor", "bad", "very_bad")


@dataclass(frozen=True)
class Degradation:
    """Ranges ``(low, high)`` from which each image's degradation is drawn (112-pixel units)."""

    colour_cast: float  # each channel's gain is drawn from [1 - cast, 1 + cast]
    contrast: tuple[float, float]  # factor towards the image mean
    blur_sigma: tuple[float, float]
    downsample: tuple[float, float]  # factor; 1 keeps the resolution
    noise_std: tuple[float, float]  # in uint8 grey levels
    jpeg_quality: tuple[int, int]


DEGRADATIONS: dict[str, Degradation] = {
    "poor": Degradation(0.05, (0.85, 1.0), (0.6, 1.0), (1.8, 2.4), (3.0, 6.0), (45, 70)),
    "bad": Degradation(0.1, (0.7, 0.9), (1.2, 1.8), (3.2, 4.2), (8.0, 13.0), (25, 40)),
    "very_bad": Degradation(0.16, (0.55, 0.75), (2.2, 3.0), (7.0, 9.5), (16.0, 22.0), (10, 18)),
}
REFERENCE_SIZE = 112


def check_quality(level: str) -> str:
    if level not in QUALITY_LEVELS:
        raise ValueError(f"quality level must be one of {QUALITY_LEVELS}, got {level!r}")
    return level


def degrade(image: np.ndarray, level: str, rng: np.random.Generator) -> np.ndarray:
    """Return ``image`` (uint8 [H, W, 3]) degraded to ``level``; ``normal`` returns a copy."""
    check_quality(level)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    if level == "normal":
        return image.copy()
    spec = DEGRADATIONS[level]
    height, width = image.shape[:2]
    size_scale = min(height, width) / REFERENCE_SIZE

    # Camera colour response first: a white-balance cast and flattened contrast.
    pixels = image.astype(np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    gain = rng.uniform(1.0 - spec.colour_cast, 1.0 + spec.colour_cast, size=3).astype(np.float32)
    pixels = ((pixels - mean) * rng.uniform(*spec.contrast) + mean) * gain
    toned = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    blurred = toned.filter(ImageFilter.GaussianBlur(rng.uniform(*spec.blur_sigma) * size_scale))
    factor = rng.uniform(*spec.downsample)
    small = (max(4, round(width / factor)), max(4, round(height / factor)))
    resampled = blurred.resize(small, Image.BILINEAR).resize((width, height), Image.BICUBIC)

    noisy = np.asarray(resampled, dtype=np.float32)
    noisy += rng.normal(0.0, rng.uniform(*spec.noise_std), size=noisy.shape).astype(np.float32)
    noisy = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))

    buffer = io.BytesIO()
    noisy.save(buffer, format="JPEG", quality=int(rng.integers(spec.jpeg_quality[0],
                                                              spec.jpeg_quality[1] + 1)))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))
