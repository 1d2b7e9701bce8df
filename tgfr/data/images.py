"""Model input from what a user has: an image file, a PIL image, pixels, or a tensor the datasets give.

Photos go through the training pipeline's own steps (:class:`tgfr.data.FaceRecord` decoding,
:func:`tgfr.data.dataset.crop_and_resize`'s centred square crop and resize, and
:func:`tgfr.data.image_to_tensor`'s scaling to ``[-1, 1]``), so a photo reaches the model as
the training photos did.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.dataset import crop_and_resize, image_to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def read_pixels(image, size: int) -> np.ndarray:
    """An image file (path or open binary file), PIL image or uint8 ``[H, W, 3]`` array as uint8
    ``[size, size, 3]``: the centred square crop, resized as the training photos are."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return crop_and_resize(image, size)
    if isinstance(image, Image.Image):
        return crop_and_resize(np.asarray(image.convert("RGB")), size)
    name = str(image) if isinstance(image, (str, Path)) else getattr(image, "name", "the uploaded file")
    if isinstance(image, (str, Path)) and not Path(image).is_file():
        raise FileNotFoundError(f"no such image file: {image}")
    try:
        with Image.open(image) as opened:
            opened.draft("RGB", (size, size))  # a JPEG decodes at a reduced scale no smaller than size
            return crop_and_resize(np.asarray(opened.convert("RGB")), size)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{name} is not a readable image file (PNG, JPEG, BMP, ...)") from error


def to_model_input(image, size: int) -> torch.Tensor:
    """One image as float32 ``[3, size, size]`` in ``[-1, 1]``. A tensor must already be that (as the
    datasets' items are); anything else is read by :func:`read_pixels`."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or tuple(image.shape) != (3, size, size) or not image.is_floating_point():
            raise ValueError(f"image tensors must be float [3, {size}, {size}] in [-1, 1] (the model's input), "
                             f"got {image.dtype} {list(image.shape)}; pass a path or PIL image to have it resized")
        return image.float()
    return image_to_tensor(read_pixels(image, size))


def as_image_list(images) -> tuple[list, bool]:
    """``(list of single images, whether a batch was given)`` for one image, a list or tuple of them, or
    a ``[B, 3, H, W]`` tensor (``[B, H, W, 3]`` uint8 array)."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images), True
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


def image_files(directory, what: str = "image folder") -> list[Path]:
    """The image files under ``directory`` (recursively, sorted); an error naming it (as ``what``) when
    it is no directory or holds none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} {directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{what} {directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
