"""Job entrypoint of ``galray simulate``: synthetic data with known truth, on the cluster.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate.py survey --out '$GALRAY_SHARED/survey' --n-injections 1700000 --nside 512
    ... -- python jobs/simulate.py deepfield --out '$GALRAY_SHARED/deepfield.fits' --size 4096

The first argument picks what (``survey`` or ``deepfield``); the rest are its ``galray`` options.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["simulate"]))
