"""A conditional normalizing flow for the transfer-function emulator, built on ``zuko``.

Shapes as in :mod:`galray.models.emulator`: ``B`` rows, ``C`` condition features, ``Y`` observed
quantities (one per band).  The flow is a density ``p(y | cond)``: a stack of ``transforms``
rational-quadratic neural-spline autoregressive transforms (Durkan et al. 2019) whose spline
parameters come from masked MLPs that also see the conditions, over a standard normal base.

Heavy tails.  Blends make the measured-minus-true distribution one-sided and heavy-tailed: about
1 % of detected rows lie 5 to 20 standard deviations below the bulk.  The splines are defined on
[-5, 5] (the identity outside), so the data side starts with zuko's fixed soft clip
``y -> y / (1 + |y| / 5)``, which maps the real line into (-5, 5) -- nearly the identity on the
bulk, logarithmic-like compression of the tail -- and the splines then shape all of it.  Sampling
inverts it; draws of the base so extreme (|z| > 5) that the splines pass them through unchanged
are held inside 0.95 of the clip's range, i.e. within 19 x 5 standard deviations.

Why a flow beside the GAN: its loss is the exact negative log-likelihood, so training is a plain
minimisation (no critic, no equilibrium to balance), widths are calibrated by construction, and
``log_prob`` scores any measurement.  Sampling maps base noise ``z ~ N(0, I)`` [B, Y] through the
inverse transform, so :class:`ConditionalFlow` is called like the GAN's generator,
``(z, cond) -> y``, and everything downstream (sampling with a seed, emulation, evaluation) is
shared.  The inverse of an autoregressive transform takes ``passes`` sequential network
evaluations (``Y`` when fully autoregressive; 2 for coupling): a few more than the forward
direction, all of it batched.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import zuko
from torch import nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform

from galray.config import require
from galray.models import spline_kernel
from galray.models.precision import activate, version_key

FLOW_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "gelu": nn.GELU}
TAIL_BOUND = 5.0  # the splines' domain is [-5, 5]: the soft clip maps the data into it
SAMPLE_LIMIT = 0.95  # inverse draws are kept within this fraction of the clip's range
SPLINE_SLOPE = 1e-3  # zuko's NSF default: the minimum slope of each spline


@dataclass
class FlowConfig:
    """Shape of the conditional flow (used when the emulator config says ``model: flow``).

    transforms: autoregressive spline transforms stacked.  bins: spline segments per transform
    (on [-bound, bound]; linear tails outside).  width / depth: hidden units and hidden layers
    of each transform's masked MLP.  passes: sequential passes of the inverse (sampling)
    direction; ``0`` means fully autoregressive (one per band), ``2`` a coupling flow.
    activation: one of ``relu``, ``silu``, ``elu``, ``gelu``.

    Defaults: on the simulated survey (0.8M injections, 90 s of training on 2 CPU cores) every
    shape tried -- width 64 or 128, 3 or 4 transforms, fully autoregressive or coupling --
    reached a classifier two-sample AUC of 0.501-0.504; coupling at width 64 samples 2.6x
    faster than fully autoregressive at width 128 (122k vs 47k rows/s on one CPU core pair),
    since each pass re-evaluates every transform's network and spline.
    """

    transforms: int = 4
    bins: int = 8
    width: int = 64
    depth: int = 2
    passes: int = 2
    activation: Literal["relu", "silu", "elu", "gelu"] = "silu"

    def __post_init__(self) -> None:
        require(self.transforms >= 1, "flow.transforms", f"must be >= 1, got {self.transforms}")
        require(self.bins >= 2, "flow.bins", f"must be >= 2, got {self.bins}")
        require(self.width >= 1, "flow.width", f"must be >= 1, got {self.width}")
        require(self.depth >= 1, "flow.depth", f"must be >= 1, got {self.depth}")
        require(
            self.passes == 0 or self.passes >= 2,
            "flow.passes",
            f"must be 0 (fully autoregressive) or >= 2, got {self.passes}",
        )
        require(
            self.activation in FLOW_ACTIVATIONS,
            "flow.activation",
            f"must be one of {sorted(FLOW_ACTIVATIONS)}, got {self.activation!r}",
        )


class ConditionalFlow(nn.Module):
    """``p(y | cond)`` as a neural-spline flow.  ``forward(z [B, Y], cond [B, C]) -> y [B, Y]``
    samples (base noise to data); :meth:`log_prob` scores."""

    def __init__(self, n_cond: int, n_out: int, cfg: FlowConfig):
        super().__init__()
        self.noise_dim = n_out  # the base distribution has the data's dimension
        splines = zuko.flows.NSF(
            features=n_out,
            context=n_cond,
            bins=cfg.bins,
            transforms=cfg.transforms,
            passes=cfg.passes or None,
            randperm=False,  # zuko alternates the autoregressive order between transforms
            hidden_features=[cfg.width] * cfg.depth,
            activation=FLOW_ACTIVATIONS[cfg.activation],
        )
        clip = zuko.flows.UnconditionalTransform(zuko.transforms.SoftclipTransform, TAIL_BOUND)
        self.flow = zuko.flows.Flow([clip, *splines.transform.transforms], splines.base)
        for t in splines.transform.transforms:  # what the fast inverse below relies on
            if not isinstance(t, MaskedAutoregressiveTransform):
                continue  # one output: zuko's element-wise transform, inverted by zuko
            spline = t.univariate
            if not (
                getattr(spline, "func", None) is zuko.transforms.MonotonicRQSTransform
                and spline.keywords == {"slope": SPLINE_SLOPE}
                and [m.mask.shape for m in t.hyper if isinstance(m, zuko.nn.MaskedLinear)]
            ):
                raise RuntimeError(f"unexpected zuko {zuko.__version__} spline layout: {t!r}")

    def forward(
        self, z: torch.Tensor, cond: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Sample: base noise ``z`` [B, Y] to data [B, Y] given ``cond`` [B, C].  Always float32:
        ``dtype`` is accepted for the generator interface (:mod:`galray.models.precision`);
        in bfloat16 the spline parameters moved samples by 0.005 sd (RMS) for a 1.1x speed-up."""
        _clip, *splines = self.flow.transform.transforms
        y = z
        for t in reversed(splines):
            if isinstance(t, MaskedAutoregressiveTransform):
                y = _invert_masked_spline(t, y, cond)
            else:
                y = t(cond).inv(y)
        limit = SAMPLE_LIMIT * TAIL_BOUND
        y = y.clamp(-limit, limit)
        return y / (1 - y.abs() / TAIL_BOUND)  # the soft clip's inverse  [B, Y]

    def reference_sample(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` through zuko's own (general, slower) inverse: the yardstick the fast
        path is tested against."""
        clip, *splines = self.flow(cond).transform.transforms
        y = z
        for t in reversed(splines):
            y = t.inv(y)
        limit = SAMPLE_LIMIT * TAIL_BOUND
        return clip.inv(y.clamp(-limit, limit))

    def log_prob(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.flow(cond).log_prob(y)  # [B]


# ---------------------------------------------------------------------------- fast sampling
# Sampling inverts every autoregressive transform in ``passes`` sequential passes.  zuko's
# general inverse re-evaluates, in every pass, the whole masked network and the spline of
# *every* feature.  The inverse below computes the same map with each hidden unit evaluated
# once.  A hidden unit of zuko's masked MLP sees the features of order below some ``c`` (its
# *class*; 0: the conditions only), so its value is final once pass ``c - 1`` has filled those
# features in.  Pass ``p`` therefore computes only the hidden units of class ``p`` (from the
# units of class <= ``p`` below them) and then the spline parameters and inverse of the
# features of order ``p``: a whole inverse costs one network evaluation, as the forward
# direction does, instead of ``passes``.  The weights are cut once into (class, class) blocks,
# kept until the parameters change; the spline's softmax is folded into its knot cumsum.
# tests/test_flow.py checks it against zuko's inverse and forward; benchmarks/
# bench_flow_sample.py times it against zuko's.

# A plan is rebuilt when a parameter's storage or version counter changes
# (:func:`galray.models.precision.version_key`): an optimiser step, an EMA update,
# load_state_dict and .to() all do that; writing through ``p.data`` does not, so code that edits
# weights that way must build a new flow.  The inverse runs on detached weights:
# sampling is not differentiable with respect to the parameters (training uses log_prob).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unit_classes(t) -> list[torch.Tensor]:
    """Per hidden layer of ``t``'s masked MLP, each unit's class."""
    linear = [m for m in t.hyper if isinstance(m, nn.Linear)]
    first = linear[0].mask[:, : t.order.numel()].bool()  # [H1, F]: which features a unit sees
    classes = [torch.where(first, t.order.unsqueeze(0) + 1, 0).amax(dim=1)]
    for m in linear[1:-1]:  # a unit's class: the highest class among the units it sees
        classes.append(torch.where(m.mask.bool(), classes[-1].unsqueeze(0), 0).amax(dim=1))
    # the autoregressive property the passes rely on: an output of order g sees classes <= g
    reach = torch.where(linear[-1].mask.bool(), classes[-1].unsqueeze(0), 0).amax(dim=1)
    if (reach > t.order.repeat_interleave(t.total)).any():
        raise RuntimeError(f"unexpected zuko {zuko.__version__} masks: {t!r}")
    return classes


def _plan(t) -> tuple[list, list]:
    """``t``'s weights cut for the pass-by-pass inverse (cached while its parameters are
    unchanged): per hidden layer and pass ``p``, the bias and activation of the class-``p`` units
    and their weights against each class of the layer below (the first layer: against all
    inputs); per pass, the features it inverts and the output layer's blocks for them."""
    key = tuple(version_key(q) for q in t.parameters())
    cached = _PLANS.get(t)
    if cached is not None and cached[0] == key:
        return cached[1]
    modules = list(t.hyper)
    linear = [m for m in modules if isinstance(m, nn.Linear)]
    acts = [modules[2 * i + 1] for i in range(len(linear) - 1)]
    members = [[(c == p).nonzero().squeeze(1) for p in range(t.passes)] for c in _unit_classes(t)]
    with torch.no_grad():
        masked = [((m.mask * m.weight).detach(), m.bias.detach()) for m in linear]

        def blocks(w: torch.Tensor, rows: torch.Tensor, below: list, p: int) -> list:
            return [(c, w[rows][:, below[c]]) for c in range(p + 1) if below[c].numel()]

        hidden = []
        for i, ((w, b), act) in enumerate(zip(masked, acts)):
            hidden.append(
                [
                    (
                        [(0, w[rows])] if i == 0 else blocks(w, rows, members[i - 1], p),
                        b[rows],
                        act,
                    )
                    for p, rows in enumerate(members[i])
                ]
            )
        w, b = masked[-1]
        outputs = []
        for p in range(t.passes):
            sel = (t.order == p).nonzero().squeeze(1)
            # kind-major (the widths of every feature, their heights, their derivatives), so
            # each kind's values are contiguous within a row for the spline's arithmetic
            rows = torch.cat(
                [
                    (sel.unsqueeze(1) * t.total + torch.arange(a, b)).reshape(-1)
                    for a, b in _kinds(t)
                ]
            )
            outputs.append((sel, blocks(w, rows, members[-1], p), b[rows]))
    _PLANS[t] = (key, (hidden, outputs))
    return hidden, outputs


def _kinds(t) -> tuple[tuple[int, int], ...]:
    """Where a feature's spline widths, heights and derivatives lie among its ``t.total``
    parameters (zuko's order: ``k``, ``k`` and ``k - 1`` values)."""
    k = t.shapes[0][0]
    return (0, k), (k, 2 * k), (2 * k, t.total)


def _linear(b: torch.Tensor, blocks: list, inputs: list) -> torch.Tensor:
    """``b + sum_c inputs[c] @ w_c.T`` over the (class ``c``, weights ``w_c``) blocks."""
    (c, w), *rest = blocks
    acc = torch.addmm(b, inputs[c], w.T)
    for c, w in rest:
        acc.addmm_(inputs[c], w.T)
    return acc


def _invert_masked_spline(t, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The inverse of zuko's ``MaskedAutoregressiveTransform`` ``t`` (rational-quadratic splines)
    at ``y`` [B, Y] given ``cond`` [B, C]."""
    hidden, outputs = _plan(t)
    inputs = torch.cat([torch.zeros_like(y), cond], dim=-1)  # features filled in pass by pass
    x = inputs[:, : y.shape[1]]
    units: list[list] = [[None] * t.passes for _ in hidden]  # [layer][class] -> [B, n]
    for p in range(t.passes):
        for i, layer in enumerate(hidden):
            ws, b, act = layer[p]
            if b.numel():
                units[i][p] = activate(act, _linear(b, ws, [inputs] if i == 0 else units[i - 1]))
        sel, ws, bias = outputs[p]
        if sel.numel() == 0:
            continue
        params = _linear(bias, ws, units[-1])  # [B, len(sel) * total], kind-major
        n, ((_, k), _, (lo, hi)) = len(sel), _kinds(t)
        wh = params[:, : 2 * n * k].view(-1, 2, n, k)
        derivs = params[:, lo * n : hi * n].view(-1, n, hi - lo)
        if fused_spline(y, params):
            _rqs_inverse_fused(y, sel, params, k, x)
        else:
            x[:, sel] = _rqs_inverse(y[:, sel], wh, derivs)
    return x.clone()


def fused_spline(*tensors: torch.Tensor) -> bool:
    """Whether the spline inverse may run as the fused numba kernel
    (:mod:`galray.models.spline_kernel`): numba installed, float32 tensors on the CPU, and no
    gradient to record (autograd and GPU tensors take the torch path)."""
    grad = torch.is_grad_enabled() and any(v.requires_grad for v in tensors)
    return (
        spline_kernel.AVAILABLE
        and not grad
        and all(v.device.type == "cpu" and v.dtype == torch.float32 for v in tensors)
    )


def _rqs_inverse_fused(
    y: torch.Tensor, sel: torch.Tensor, params: torch.Tensor, bins: int, x: torch.Tensor
) -> None:
    """``x[:, sel] = _rqs_inverse(y[:, sel], wh, derivs)`` (to float32 rounding) in one numba
    pass, ``params`` [B, >= len(sel) (3 bins - 1)] holding ``wh`` then ``derivs`` as
    :func:`_invert_masked_spline` cuts them; ``x`` is written in place."""
    log_slope = math.log(SPLINE_SLOPE)
    spline_kernel.rqs_inverse_into(
        y.numpy(),
        sel.numpy(),
        params.numpy(),
        bins,
        x.numpy(),
        np.float32(TAIL_BOUND),
        np.float32(2 / log_slope),
        np.float32(log_slope),
    )


def _rqs_inverse(y: torch.Tensor, wh: torch.Tensor, derivs: torch.Tensor) -> torch.Tensor:
    """Inverse of zuko's ``MonotonicRQSTransform(widths, heights, derivs, bound=TAIL_BOUND,
    slope=SPLINE_SLOPE)`` at ``y`` [B, N]: ``wh`` [B, 2, N, K] the widths then the heights,
    ``derivs`` [B, N, K - 1], unconstrained; the identity outside [-bound, bound]."""
    log_slope = math.log(SPLINE_SLOPE)
    bound = TAIL_BOUND
    # the knots of the widths and heights at once; the logits are squashed into
    # |l| < |log slope| / 2, so exp needs no max subtraction
    c = torch.exp(wh / (1 - (2 / log_slope) * wh.abs())).cumsum_(dim=-1)
    knots = F.pad(c.mul_((2 * bound) / c[..., -1:]).sub_(bound), (1, 0), value=-bound)
    xs, ys = knots[:, 0], knots[:, 1]  # [B, N, K + 1]
    ds = F.pad(torch.exp(derivs / (1 - derivs.abs() / log_slope)), (1, 1), value=1.0)
    bins = wh.shape[-1]
    k = (ys < y.unsqueeze(-1)).sum(dim=-1, keepdim=True) - 1  # [B, N, 1]
    inside = ((k >= 0) & (k < bins)).squeeze(-1)
    k = k.clamp_(0, bins - 1)
    x0, x1 = xs.gather(-1, k).squeeze(-1), xs.gather(-1, k + 1).squeeze(-1)
    y0, y1 = ys.gather(-1, k).squeeze(-1), ys.gather(-1, k + 1).squeeze(-1)
    d0, d1 = ds.gather(-1, k).squeeze(-1), ds.gather(-1, k + 1).squeeze(-1)
    dy = y1 - y0
    s = dy / (x1 - x0)
    r = torch.where(inside, y - y0, 0.0)
    t = d0 + d1 - 2 * s
    a, b, c = dy * (s - d0) + r * t, dy * d0 - r * t, -s * r
    u = 2 * c / (-b - (b * b - 4 * a * c).sqrt())  # the stable root of a u^2 + b u + c = 0
    return torch.where(inside, x0 + u * (x1 - x0), y)
