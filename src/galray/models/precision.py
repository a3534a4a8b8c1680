"""Sampling arithmetic: float32, or bfloat16 between the hidden layers on hardware that
multiplies bfloat16 natively.

An emulator spends most of a survey's emulation in the matrix products of its small MLPs (the
detection model's, the GAN generator's, the flow's spline-parameter networks).  CPUs with
AVX512-BF16 (or AMX) multiply bfloat16 matrices about twice as fast as float32 ones, accumulating
in float32.  Under ``bf16`` the products *between* hidden layers run in bfloat16; the first
layer (on the inputs as given) and the last (whose outputs are the emulated values, the detection
logit or the spline parameters) stay float32, so neither an input nor an output is rounded to
bfloat16's 8-bit mantissa: what changes is each hidden activation and hidden-to-hidden weight, by
up to 2^-9 of itself.  Training is always float32.  ``auto`` picks ``bf16`` where it is native on
a CPU and ``fp32`` elsewhere (a GPU's share of a shard's time is small, so it keeps float32
there): it depends on the hardware, so ``galray emulate`` resolves it once, on the driver, and
records the result.  The same rows, seed and (resolved) precision give the same output.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from galray.config import require

PRECISIONS = ("auto", "fp32", "bf16")  # the names deepfield's ``precision`` uses too

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


def resolve_name(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what ``precision`` (one of :data:`PRECISIONS`) means on
    ``device``."""
    require(
        precision in PRECISIONS,
        "precision",
        f"must be one of {list(PRECISIONS)}, got {precision!r}",
    )
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the hidden layers for ``precision`` (one of :data:`PRECISIONS`)."""
    return torch.bfloat16 if resolve_name(precision, device) == "bf16" else torch.float32


def version_key(q: torch.Tensor) -> tuple[int, int]:
    """What identifies ``q``'s current values: its storage and in-place version counter (an
    optimiser step, an EMA update, ``load_state_dict`` and ``.to()`` change one of them; writing
    through ``q.data`` does not).  An inference tensor has no version counter and cannot be
    changed in place outside inference mode."""
    return q.data_ptr(), (-1 if q.is_inference() else q._version)


def cast(param: torch.Tensor, dtype: torch.dtype, owner: nn.Module) -> torch.Tensor:
    """``param`` (a parameter of ``owner``) in ``dtype``; the copy is kept while the parameter
    is the same tensor with the same values (:func:`version_key`)."""
    if param.dtype == dtype:
        return param
    store = _COPIES.setdefault(owner, {})
    hit = store.get((id(param), dtype))
    key = version_key(param)
    if hit is None or hit[0]() is not param or hit[1] != key:
        hit = (weakref.ref(param), key, param.detach().to(dtype))
        store[(id(param), dtype)] = hit
    return hit[2]


# Activations with an in-place form.  Sampling applies them in place to the Linear output it
# has just made: the same kernel, so the same values, without allocating (and first touching) a
# second [rows, width] tensor per layer.  Per 200k-row shard on one core (2-vCPU EPYC, bf16,
# best of 3 under load): the GAN's generator and detection MLPs 0.21 -> 0.18 CPU s, the flow's
# networks 0.165 -> 0.146.
_IN_PLACE = {
    nn.ReLU: lambda m, h: h.relu_(),
    nn.LeakyReLU: lambda m, h: nn.functional.leaky_relu_(h, m.negative_slope),
    nn.SiLU: lambda m, h: nn.functional.silu(h, inplace=True),
    nn.ELU: lambda m, h: nn.functional.elu_(h, m.alpha),
}


def activate(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``act(h)`` for an ``h`` the caller owns (a fresh Linear output), in place when autograd
    is not recording ``h`` and ``act`` has an in-place form."""
    in_place = _IN_PLACE.get(type(act))
    if in_place is None or (torch.is_grad_enabled() and h.requires_grad):
        return act(h)
    return in_place(act, h)


def mlp_forward(net: nn.Sequential, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``net(x)`` for a stack of Linear and activation modules ending in a Linear: the first and
    last Linear in float32, the hidden-to-hidden ones in ``dtype``; activations in place when
    autograd is not recording (:func:`activate`)."""
    linear = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    low = dtype != torch.float32 and len(linear) >= 3  # any hidden-to-hidden product at all
    recording = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in net.parameters())
    )
    if not low and recording:
        return net(x)
    h = x
    for i, m in enumerate(net):
        if not isinstance(m, nn.Linear):
            h = activate(m, h) if i > 0 and isinstance(net[i - 1], nn.Linear) else m(h)
        elif low and linear[0] < i < linear[-1]:
            h = h.to(dtype) if i == linear[1] else h
            h = nn.functional.linear(h, cast(m.weight, dtype, m), cast(m.bias, dtype, m))
        else:
            h = m(h.float() if low and i == linear[-1] else h)
    return h
