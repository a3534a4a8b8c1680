"""What each emulation worker computes and how many there are, without starting Ray: random
positions, the worker module's imports, the actor pool's shape on a cluster."""

from __future__ import annotations

import subprocess
import sys

import healpy as hp
import numpy as np
import pytest

from galray.datasets.conditions import ConditionMap
from galray.emulator.emulate import pool_shape, random_positions


def _map(nside: int, ordering: str, n: int = 40, seed: int = 3) -> ConditionMap:
    pixels = np.unique(np.random.default_rng(seed).integers(0, 12 * nside**2, n))
    return ConditionMap(
        pixels, np.zeros((pixels.size, 1), np.float32), ("depth_i",), nside, ordering
    )


@pytest.mark.parametrize("ordering", ["RING", "NESTED"])
@pytest.mark.parametrize("nside", [1, 64, 4096, 2**20])
def test_random_positions_fall_in_their_pixels_uniformly(ordering, nside):
    """Each position lies in the footprint pixel drawn for it (as healpy assigns it), in the
    map's own ordering, and is spread over that pixel, not put at its centre.  nside 2^20: the
    sub-pixels are 2^9, not 2^10, times finer (nside stays within HEALPix's 2^29)."""
    cmap = _map(nside, ordering)
    ra, dec, pixel, row = random_positions(cmap, 20_000, np.random.default_rng(3))
    np.testing.assert_array_equal(pixel, cmap.pixels[row])
    nest = ordering == "NESTED"
    np.testing.assert_array_equal(hp.ang2pix(nside, ra, dec, lonlat=True, nest=nest), pixel)
    first = pixel == pixel[0]
    spread = np.hypot(np.std(ra[first]) * np.cos(np.radians(dec[first].mean())), np.std(dec[first]))
    assert spread > 0.2 * hp.nside2resol(nside, arcmin=True) / 60


def test_emulation_workers_do_not_import_healpy():
    """What a worker runs -- the module, the bundle, random positions -- leaves out healpy (its
    import pulls in matplotlib and astropy: ~0.7 s of every emulation worker's start)."""
    code = (
        "import sys, numpy as np\n"
        "import galray.emulator.emulate as e, galray.emulator.bundle\n"
        "from galray.datasets.conditions import ConditionMap\n"
        "cmap = ConditionMap(np.arange(5), np.zeros((5, 1), np.float32), ('d',), 2, 'RING')\n"
        "e.random_positions(cmap, 10, np.random.default_rng(0))\n"
        "print(sorted(m for m in ('healpy', 'matplotlib', 'astropy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _node(cpus, gpus=0, alive=True):
    resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return {"Alive": alive, "Resources": resources}


def _fits(nodes, workers, share):
    """Whether ``workers`` actors of 1 CPU and ``share`` GPU each can all be placed."""
    left = [[int(n["Resources"]["CPU"]), n["Resources"].get("GPU", 0)] for n in nodes]
    for _ in range(workers):
        free = [n for n in left if n[0] >= 1 and n[1] >= share - 1e-12]
        if not free:
            return False
        free[0][0] -= 1
        free[0][1] -= share
    return True


def test_pool_shape_fills_each_node_without_an_actor_left_unplaced():
    # CPUs only: one actor per CPU, wherever it is
    assert pool_shape([_node(2)]) == (2, 0.0)
    assert pool_shape([_node(4), _node(4), _node(8, alive=False)]) == (8, 0.0)
    # one GPU node: one actor per CPU but one, the GPU shared (floored to Ray's 1e-4 unit:
    # 15 x 1/15 rounded up would ask for more than the one GPU)
    workers, share = pool_shape([_node(16, 1)])
    assert workers == 15 and share == 0.0666 and workers * share <= 1
    # a CPU-less head and GPU nodes of 8 CPUs: 7 actors per node, each 1/7 of its GPU (the
    # cluster-wide count, 8n - 1 actors of n/(8n-1) GPU, left n - 1 of them unplaceable)
    nodes = [_node(0), _node(8, 1), _node(8, 1), _node(8, 1)]
    workers, share = pool_shape(nodes)
    assert workers == 21 and _fits(nodes, workers, share)
    # mixed GPU nodes: the smallest share fits every node
    nodes = [_node(8, 1), _node(16, 2)]
    workers, share = pool_shape(nodes)
    assert workers == 7 + 15 and _fits(nodes, workers, share)
    # --workers: that many actors sharing all GPUs, at most a whole GPU each
    assert pool_shape([_node(16, 1)], 4) == (4, 0.25)
    assert pool_shape([_node(16, 8)], 2) == (2, 1.0)
    assert pool_shape([_node(2)], 5) == (5, 0.0)
