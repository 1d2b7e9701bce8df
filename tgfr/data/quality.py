"""Image-quality levels: colour cast and contrast loss, Gaussian blur, down- then up-sampling,
additive noise, JPEG.

A degradation happens in a 112-pixel reference frame: the photo is resized so that its shorter
side is 112 pixels, degraded with parameters given in that frame, and resized back. Blur, the
lost resolution, the noise grain and JPEG's 8x8 blocks therefore all scale with the photo: a
level takes the same share of a 32-pixel face's detail as of a 96-pixel one's.

The levels are points of one severity scale (:func:`degradation_at`, 0 all but untouched, 1 the harshest),
and each photo's degradation is drawn from the level's ranges (``rng``), so one level is a spread
of degradations, not a single filter. The paper (TGFR, WACV 2024) does not say how its levels are
made; these severities are this project's own, calibrated by ``benchmarks/calibrate_quality.py``
so that the frozen image-only face encoder keeps of its normal-quality TAR@FAR=1e-3 about what
the paper's image-only AdaFace keeps: 66 % at poor, 49 % at bad, 34 % at very bad, at the demo's
(48 px) and the quick study's (32 px) image sizes alike (``benchmarks/QUALITY_CALIBRATION.md``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

QUALITY_LEVELS: tuple[str, ...] = ("normal", "poor", "bad", "very_bad")
REFERENCE_SIZE = 112


@dataclass(frozen=True)
class Degradation:
    """Ranges ``(low, high)`` from which each image's degradation is drawn, in the 112-pixel reference frame."""

    colour_cast: float  # each channel's gain is drawn from [1 - cast, 1 + cast]
    contrast: tuple[float, float]  # factor towards the image mean
    blur_sigma: tuple[float, float]  # reference pixels
    downsample: tuple[float, float]  # factor; 1 keeps the resolution
    noise_std: tuple[float, float]  # uint8 grey levels per reference pixel
    jpeg_quality: tuple[int, int]  # of the reference frame, hence its 8x8 blocks


# The ends of the severity scale: 0 leaves the photo all but untouched (a round trip through the reference
# frame and JPEG at quality 95), 1 keeps an eighth of its resolution, blurred, noisy, blocky and
# colour-shifted (landmark geometry and exact shades gone).
UNTOUCHED = Degradation(0.0, (1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (95, 95))
HARSHEST = Degradation(0.16, (0.55, 0.75), (2.2, 3.0), (7.0, 9.5), (16.0, 22.0), (10, 18))

# This project's own levels, calibrated to the paper's image-only retention (see the module docstring).
LEVEL_SEVERITY: dict[str, float] = {"poor": 0.53125, "bad": 0.71875, "very_bad": 0.84375}


def degradation_at(severity: float) -> Degradation:
    """The degradation ranges at ``severity`` in [0, 1]: every strength moves from :data:`UNTOUCHED` to
    :data:`HARSHEST` linearly, except the down-sampling factor, which moves geometrically (each step of
    severity divides the resolution by the same factor)."""
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity!r}")

    def between(start, end):
        return tuple(a + severity * (b - a) for a, b in zip(start, end))

    return Degradation(
        colour_cast=between((UNTOUCHED.colour_cast,), (HARSHEST.colour_cast,))[0],
        contrast=between(UNTOUCHED.contrast, HARSHEST.contrast),
        blur_sigma=between(UNTOUCHED.blur_sigma, HARSHEST.blur_sigma),
        downsample=tuple(a * (b / a) ** severity for a, b in zip(UNTOUCHED.downsample, HARSHEST.downsample)),
        noise_std=between(UNTOUCHED.noise_std, HARSHEST.noise_std),
        jpeg_quality=tuple(round(q) for q in between(UNTOUCHED.jpeg_quality, HARSHEST.jpeg_quality)),
    )


DEGRADATIONS: dict[str, Degradation] = {level: degradation_at(s) for level, s in LEVEL_SEVERITY.items()}


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
    return apply_degradation(image, DEGRADATIONS[level], rng)


def apply_degradation(image: np.ndarray, spec: Degradation, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 [H, W, 3]) degraded by one draw from ``spec``, in the reference frame.

    The draws come in a fixed order and each strength is a uniform draw mapped onto its range, so
    with the same ``rng`` a photo degrades monotonically as the ranges grow."""
    height, width = image.shape[:2]
    scale = REFERENCE_SIZE / min(height, width)
    frame = (round(width * scale), round(height * scale))
    gain, contrast, blur, factor, noise, jpeg = _draw(spec, rng)

    # Camera colour response first: a white-balance cast and flattened contrast.
    pixels = np.asarray(Image.fromarray(image).resize(frame, Image.BICUBIC), dtype=np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    pixels = ((pixels - mean) * contrast + mean) * gain
    toned = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    blurred = toned.filter(ImageFilter.GaussianBlur(blur))
    small = (round(frame[0] / factor), round(frame[1] / factor))  # 112 / 9.5: 12 pixels at the least
    resampled = blurred.resize(small, Image.BILINEAR).resize(frame, Image.BICUBIC)

    noisy = np.asarray(resampled, dtype=np.float32) + noise * rng.standard_normal(
        (frame[1], frame[0], 3), dtype=np.float32)
    noisy = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))

    buffer = io.BytesIO()
    noisy.save(buffer, format="JPEG", quality=jpeg)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB").resize((width, height), Image.BICUBIC))


def _draw(spec: Degradation, rng: np.random.Generator):
    """One image's strengths: channel gains, contrast, blur sigma, down-sampling factor, noise std, JPEG quality."""
    u = rng.random(8).tolist()

    def within(bounds, draw):
        return bounds[0] + draw * (bounds[1] - bounds[0])

    gain = np.array([1.0 + spec.colour_cast * (2.0 * g - 1.0) for g in u[:3]], dtype=np.float32)
    return (gain, within(spec.contrast, u[3]), within(spec.blur_sigma, u[4]), within(spec.downsample, u[5]),
            within(spec.noise_std, u[6]), round(within(spec.jpeg_quality, u[7])))
