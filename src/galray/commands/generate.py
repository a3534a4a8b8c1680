"""``galray generate deepfield --model URI --size HxW --out FILE.fits``: a deep field of any size,
tile by tile on Ray."""

from __future__ import annotations

import argparse

from galray.commands.common import add_model, add_output, add_size, command, group


def register(sub, groups) -> None:
    gen = group(sub, groups, "generate", help="generate data with a trained model")
    p = command(gen, "deepfield", _deepfield)
    add_model(p, "sgan")
    add_size(p)
    add_output(p, "output FITS file", overwrite="replace a field galray generated at --out")
    p.add_argument("--tile", type=int, default=1024, help="tile side in pixels (multiple of 16)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per tile task")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per tile task")


def _deepfield(args: argparse.Namespace) -> int:
    r"""Generate a deep field of any size, tile by tile on Ray, into a FITS file.

    The noise array is split into overlapping tiles that Ray tasks generate independently; the
    halo of each tile is cropped, so the stitched field equals a one-pass generation.  Tiles
    stream into the FITS file, which appears only when complete: memory is bounded by the tile
    size.  An existing --out is replaced only with --overwrite and only if galray generated it.
    The same seed gives the same field for any --tile.  Example:
        galray generate deepfield --model models:/galray-sgan-smoke@champion --size 4096x4096 \
            --out field.fits --tile 1024
    """
    from galray.deepfield.generate import check_field_output, generate_fits
    from galray.deepfield.registry import load_deepfield_model
    from galray.training.ray_env import init_ray

    h, w = args.size
    check_field_output(args.out, args.overwrite)  # before a model download or Ray
    from galray.registry import model_provenance

    model = load_deepfield_model(args.model)
    model.info["model_uri"] = args.model
    provenance = model_provenance(args.model)  # recorded in the FITS header
    init_ray()
    result = generate_fits(
        model,
        args.out,
        h,
        w,
        seed=args.seed,
        tile=args.tile,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        overwrite=args.overwrite,
        provenance=provenance,
    )
    print(
        f"wrote {result.path}: {h}x{w} px x {len(model.bands)} bands in {result.tiles} tiles "
        f"(halo {result.halo[0]}+{result.halo[1]} noise cells), {result.seconds:.1f} s, "
        f"{result.pixels_per_second / 1e6:.2f} Mpix/s"
    )
    return 0
