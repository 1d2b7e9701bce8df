"""CUDA's autocast policy applied to CPU tensors, so that CPU tests see what a GPU run sees.

CPU autocast has its own op lists (it keeps ``acos`` in bfloat16, promotes ``cat`` and
``index_copy``); CUDA's differ, and code that works under one can fail under the other. Inside
``cuda_autocast()`` the CPU autocast dispatch key runs CUDA's policy instead of its own: the
kernels registered here for ``AutocastCPU`` are CUDA's (``aten/src/ATen/autocast_mode.h`` and the
``AutocastCUDA`` block of ``autocast_mode.cpp``), copied list by list, and every other op that has a
CPU autocast kernel falls through, as it does on CUDA. The casts happen above autograd, as real
autocast does, so gradients flow through them; ``torch.autocast("cpu", enabled=False)`` (an island)
turns the emulation off like it turns off real autocast.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

# AT_FORALL_LOWER_PRECISION_FP, plus cudnn_convolution(_transpose) registered beside it: run in the autocast dtype
LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr", "matmul",
    "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
    "cudnn_convolution", "cudnn_convolution_transpose",
)
# AT_FORALL_FP32: run in float32
FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm", "native_layer_norm",
    "rms_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss",
    "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
    "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm",
    "logsumexp", "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
)
# AT_FORALL_FP32_SET_OPT_DTYPE: an unset dtype= becomes float32 when the first argument is eligible
FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList",
)
# AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE (fp32_append_dtype): redispatched to the overload taking a dtype
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
# AT_FORALL_PROMOTE: every eligible input cast to the widest of them and the autocast dtype
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
           "tensordot", "scatter_add")
BANNED = ("binary_cross_entropy",)

CUDA_POLICY_OPS = {*LOWER_PRECISION_FP, *FP32, *FP32_SET_OPT_DTYPE, *FP32_APPEND_DTYPE, *PROMOTE, *BANNED}


def _overload(name: str):
    op, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, op), overload or "default")


def ops_with_autocast_kernel(dispatch_key: str) -> set[str]:
    """``aten`` ops (``name.overload``) with a kernel of their own for ``dispatch_key`` in this torch build."""
    return {name[len("aten::"):] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)}


def _eligible(value) -> bool:
    # autocast's is_eligible: a floating tensor of the autocast device, float64 left alone
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == "cpu" \
        and value.dtype != torch.float64


def _cast(value, dtype):
    if _eligible(value):
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _tensors(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _tensors(value)
        elif isinstance(value, torch.Tensor):
            yield value


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _casting_kernel(op, dtype_of):
    """A kernel that casts every eligible input to ``dtype_of(args, kwargs)`` and runs ``op`` below autocast."""
    def kernel(*args, **kwargs):
        dtype = dtype_of(args, kwargs)
        with _no_autocast():
            return op(*_cast(args, dtype), **{k: _cast(v, dtype) for k, v in kwargs.items()})
    return kernel


def _set_opt_dtype_kernel(op):
    position = next(i for i, a in enumerate(op._schema.arguments) if a.name == "dtype")

    def kernel(*args, **kwargs):
        with _no_autocast():
            if not (args and _eligible(args[0])):
                return op(*args, **kwargs)
            if len(args) > position:
                if args[position] is None:
                    args = (*args[:position], torch.float32, *args[position + 1:])
            elif kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)
    return kernel


def _append_dtype_kernel(op, with_dtype):
    defaults = [argument.default_value for argument in op._schema.arguments]

    def kernel(*args):
        args = (*args, *defaults[len(args):])  # the dispatcher leaves out trailing defaults
        dtype = torch.float32 if _eligible(args[0]) else args[0].dtype
        with _no_autocast():
            return with_dtype(*args, dtype=dtype)
    return kernel


def _banned_kernel(name):
    def kernel(*args, **kwargs):
        raise RuntimeError(f"torch.nn.functional.{name} is unsafe to autocast (CUDA policy)")
    return kernel


def _promoted(args, kwargs):
    dtype = torch.get_autocast_dtype("cpu")
    for tensor in _tensors([*args, *kwargs.values()]):
        if _eligible(tensor):
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16):
    """``torch.autocast("cpu", dtype)`` running CUDA's op lists instead of the CPU's."""
    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # each override of a CPU autocast kernel warns; overriding is the point
            warnings.simplefilter("ignore")
            _register(library)
        with torch.autocast("cpu", dtype=dtype):
            yield
    finally:
        library._destroy()  # the CPU's own autocast kernels are back


def _register(library) -> None:
    key = "AutocastCPU"
    for name in LOWER_PRECISION_FP:
        library.impl(name, _casting_kernel(_overload(name), lambda a, k: torch.get_autocast_dtype("cpu")), key)
    for name in FP32:
        library.impl(name, _casting_kernel(_overload(name), lambda a, k: torch.float32), key)
    for name in FP32_SET_OPT_DTYPE:
        library.impl(name, _set_opt_dtype_kernel(_overload(name)), key)
    for name, with_dtype in FP32_APPEND_DTYPE.items():
        library.impl(name, _append_dtype_kernel(_overload(name), _overload(with_dtype)), key)
    for name in PROMOTE:
        library.impl(name, _casting_kernel(_overload(name), _promoted), key)
    for name in BANNED:
        library.impl(name, _banned_kernel(name), key)
    # CPU-only entries (cat, stack, index_copy promote; cross_entropy_loss, ... in float32) do not exist on CUDA
    for name in ops_with_autocast_kernel(key) - CUDA_POLICY_OPS:
        library.impl(name, torch.library.fallthrough_kernel, key)
