"""Sampling arithmetic: float32, or bfloat16 between the hidden layers on hardware that
multiplies bfloat16 natively.

An emulator spends most of a survey's emulation in the matrix products of its small MLPs (the
detection model's, the GAN generator's, the flow's spline-parameter networks).  CPUs with
AVX512-BF16 (or AMX) multiply bfloat16 matrices about twice as fast as float32 ones, accumulating
in float32.  Under ``bfloat16`` the products *between* hidden layers run in bfloat16; the first
layer (on the inputs as given) and the last (whose outputs are the emulated values, the detection
logit or the spline parameters) stay float32, so neither an input nor an output is rounded to
bfloat16's 8-bit mantissa: what changes is each hidden activation and hidden-to-hidden weight, by
up to 2^-9 of itself.  Training is always float32.  ``auto`` picks bfloat16 where it is native on
a CPU and float32 elsewhere (a GPU's share of a shard's time is small, so it keeps float32 there).
The same rows, seed and precision give the same output.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from galray.config import require

PRECISIONS = ("auto", "float32", "bfloat16")

_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (a CPU with AVX512-BF16 or
    AMX, as oneDNN reports it)."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the hidden layers for ``precision`` (one of :data:`PRECISIONS`)."""
    require(
        precision in PRECISIONS,
        "precision",
        f"must be one of {list(PRECISIONS)}, got {precision!r}",
    )
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def cast(tensor: torch.Tensor, dtype: torch.dtype, owner: nn.Module | None = None) -> torch.Tensor:
    """``tensor`` (a parameter) in ``dtype``; copies are kept while the parameter is unchanged."""
    if tensor.dtype == dtype:
        return tensor
    key = (tensor.data_ptr(), tensor._version, dtype)
    store = _COPIES.setdefault(owner if owner is not None else tensor, {})
    hit = store.get(id(tensor))
    if hit is None or hit[0] != key:
        hit = (key, tensor.detach().to(dtype))
        store[id(tensor)] = hit
    return hit[1]


def mlp_forward(net: nn.Sequential, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``net(x)`` for a stack of Linear and activation modules ending in a Linear: the first and
    last Linear in float32, the hidden-to-hidden ones in ``dtype``."""
    linear = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    if dtype == torch.float32 or len(linear) < 3:
        return net(x)
    h = x
    for i, m in enumerate(net):
        if i == linear[1]:
            h = h.to(dtype)
        elif i == linear[-1]:
            h = h.float()
        if isinstance(m, nn.Linear) and linear[0] < i < linear[-1]:
            h = nn.functional.linear(h, cast(m.weight, dtype, m), cast(m.bias, dtype, m))
        else:
            h = m(h)
    return h
