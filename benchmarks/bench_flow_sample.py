"""Conditional-flow sampling speed: galray's spline inverse against zuko's, in the same run.

Both invert the same (untrained, seeded, perturbed) flow on the same rows; the fast path's
output is checked against zuko's before timing.  Rows per CPU-second on one thread (insensitive
to other load on the machine) and rows per wall-second on all threads.

    python benchmarks/bench_flow_sample.py
    python benchmarks/bench_flow_sample.py --rows 65536 --repeats 5

Shapes: the riz survey (10 conditions: 3 true magnitudes, size, PSF FWHM and depth per band;
3 outputs) and the DES-Y6-like preset (27 conditions; 12 outputs: griz fluxes and flux errors,
snr, T, size_ratio, flags), with the default FlowConfig (4 coupling transforms, width 64).

Results (2026-11-29, 2-vCPU Intel Xeon VM, torch 2.13 CPU, 8,192-row blocks as emulate runs
them; other jobs were running, so only the ratios are meaningful)::

    shape        zuko rows/cpu-s   galray rows/cpu-s   speed-up
    riz  10->3         57,000           170,000          3.0-3.2x
    DES  27->12        15,000            63,000          4.1x
"""

from __future__ import annotations

import argparse
import time

import torch

from galray.models.flow import TAIL_BOUND, ConditionalFlow, FlowConfig

SHAPES = {"riz": (10, 3), "des-y6": (27, 12)}


def _rate(fn, rows: int, repeats: int, clock) -> float:
    fn()  # warm-up
    t0 = clock()
    for _ in range(repeats):
        fn()
    return rows * repeats / (clock() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65_536)
    ap.add_argument("--block", type=int, default=8_192, help="rows per network call")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.rows} rows in {args.block} blocks")
    print(f"{'shape':<8} {'clock':<9} {'zuko':>12} {'galray':>12} {'ratio':>7}")
    for name, (n_cond, n_out) in SHAPES.items():
        torch.manual_seed(0)
        flow = ConditionalFlow(n_cond, n_out, FlowConfig()).eval()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.1 * torch.randn_like(p))
        z, cond = torch.randn(args.rows, n_out), torch.randn(args.rows, n_cond)

        def blocks(f, z=z, cond=cond):
            return lambda: [
                f(z[a : a + args.block], cond[a : a + args.block])
                for a in range(0, args.rows, args.block)
            ]

        with torch.inference_mode():
            clip = lambda y: y / (1 + y.abs() / TAIL_BOUND)  # noqa: E731
            err = (clip(flow(z, cond)) - clip(flow.reference_sample(z, cond))).abs().max()
            assert float(err) < 1e-4, f"fast inverse differs from zuko's by {float(err)}"
            for clock_name, clock, n_threads in (
                ("cpu 1thr", time.process_time, 1),
                ("wall", time.perf_counter, threads),
            ):
                torch.set_num_threads(n_threads)
                ref = _rate(blocks(flow.reference_sample), args.rows, args.repeats, clock)
                fast = _rate(blocks(flow), args.rows, args.repeats, clock)
                print(f"{name:<8} {clock_name:<9} {ref:>12,.0f} {fast:>12,.0f} {fast / ref:>6.2f}x")
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
