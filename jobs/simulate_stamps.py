"""Job entrypoint of ``galray simulate stamps``: GalSim galaxy stamps with known properties, PSFs and noise.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate_stamps.py --out '$GALRAY_SHARED/stamps-12k' --n 12000 --size 48 --seed 0 --workers 4

Arguments are those of ``galray simulate stamps``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["simulate", "stamps"]))
