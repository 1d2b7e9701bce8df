"""Word -> region attention heat-maps: which face regions each caption word attends to.

matplotlib is imported when a figure is drawn, not with the evaluation package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def image_for_display(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] (any range, e.g. normalised to [-1, 1]) -> [H, W, 3] in [0, 1]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"images must be [3, H, W] or [1, H, W] tensors, got shape {tuple(image.shape)}")
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image.expand(3, -1, -1).permute(1, 2, 0).numpy()


def _upsample(attention: torch.Tensor, size: tuple[int, int], peak: float) -> np.ndarray:
    """[h, w] attention over regions -> [H, W] heat-map divided by ``peak``, for overlaying."""
    heat = torch.nn.functional.interpolate(attention.detach().float().cpu()[None, None], size=size,
                                           mode="bilinear", align_corners=False)[0, 0]
    return (heat / max(peak, 1e-12)).numpy()


def sharpest_words(attention: torch.Tensor, count: int) -> list[int]:
    """Indices, in caption order, of the ``count`` words of ``attention`` [T, h, w] with the highest peak."""
    peaks = attention.flatten(1).amax(dim=1)
    return sorted(peaks.topk(min(count, peaks.numel())).indices.tolist())


def plot_attention_grid(images, words, attention, path, words_per_image: int = 5) -> Path:
    """One row per example: the image, then the attention of a few of its caption words overlaid on it.

    ``images``: K tensors [3, H, W]; ``words``: K lists of caption words; ``attention``: K tensors
    [T, h, w] holding, for word t, its attention over the h x w image regions (T == len(words)).
    Each row shows the ``words_per_image`` words of :func:`sharpest_words`: function words like
    "a" or "has" tend to spread their attention and drop out.
    """
    if not len(images) == len(words) == len(attention) or len(images) == 0:
        raise ValueError(
            f"images, words and attention must be non-empty and of equal length, "
            f"got {len(images)}, {len(words)} and {len(attention)}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + words_per_image
    figure, axes = plt.subplots(len(images), columns, figsize=(1.9 * columns, 2.1 * len(images)), squeeze=False)
    for row, (image, caption_words, word_attention) in enumerate(zip(images, words, attention)):
        if word_attention.ndim != 3 or word_attention.shape[0] != len(caption_words):
            raise ValueError(
                f"attention[{row}] must be [T, h, w] with T = {len(caption_words)} words, "
                f"got shape {tuple(word_attention.shape)}"
            )
        picture = image_for_display(image)
        axes[row][0].imshow(picture)
        axes[row][0].set_title("image", fontsize=9)
        # One colour scale per row, so a word that spreads its attention looks flat next to a focused one.
        peak = float(word_attention.max())
        for axis, word_index in zip(axes[row][1:], sharpest_words(word_attention, words_per_image)):
            axis.imshow(picture)
            axis.imshow(_upsample(word_attention[word_index], picture.shape[:2], peak), cmap="jet", alpha=0.5,
                        vmin=0.0, vmax=1.0)
            axis.set_title(caption_words[word_index], fontsize=9)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
