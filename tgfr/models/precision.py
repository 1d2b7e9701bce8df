"""Float32 islands: the numerically sensitive parts of the application, whatever autocast is active.

Under ``torch.autocast`` each op runs in the precision its device's policy gives it, and the
policies differ: CUDA runs ``acos``, ``exp`` and softmax in float32 and products in bfloat16, the
CPU keeps more in bfloat16. Code written against one policy can meet mixed dtypes under another
(``scatter`` of a float32 source into bfloat16 logits fails), and bfloat16's 8-bit mantissa loses
what margins, temperatures and logit scales need (``1 - 1e-7`` rounds to 1, where ``acos`` has an
infinite slope). So the loss heads are islands: autocast off for the device of their inputs, and
every floating input (also inside dicts, lists and tuples) cast to float32 once, on entry. Their
outputs are float32; float64 inputs stay float64.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from ..ops.common import autocast_disabled


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.element_size() < 4 else value
    if isinstance(value, dict):
        return {key: _to_float32(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_to_float32(item) for item in value)
    return value


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _autocast_off(args, kwargs):
    """Autocast off for the device of the first tensor among the arguments (if it has autocast at all)."""
    device = next((t.device for t in _tensors((args, kwargs))), None)
    return contextlib.nullcontext() if device is None else autocast_disabled(device)


def float32_island(function):
    """Decorate ``function`` (or a module's ``forward``) to run as a float32 island (see the module doc)."""

    @functools.wraps(function)
    def island(*args, **kwargs):
        args, kwargs = _to_float32(args), _to_float32(kwargs)
        with _autocast_off(args, kwargs):
            return function(*args, **kwargs)

    return island
