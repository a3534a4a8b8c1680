"""Job entrypoint of ``galray simulate deepfield``: a GalSim deep field and its true catalog.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate_deepfield.py --out '$GALRAY_SHARED/deepfield-4096.fits' --size 4096 --seed 0

Arguments are those of ``galray simulate deepfield``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["simulate", "deepfield"]))
