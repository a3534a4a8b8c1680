"""Job entrypoint of ``galray simulate survey``: a synthetic Balrog-style survey with a known transfer function.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate_survey.py --out '$GALRAY_SHARED/survey' --n-injections 1700000 --nside 512 --seed 1

Arguments are those of ``galray simulate survey``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["simulate", "survey"]))
