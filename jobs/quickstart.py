"""Job entrypoint of ``galray quickstart``: simulate, train, emulate and evaluate a small survey.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/quickstart.py --out '$GALRAY_SHARED/quickstart'

Arguments are those of ``galray quickstart``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["quickstart"]))
