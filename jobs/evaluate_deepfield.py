"""Job entrypoint of ``galray evaluate deepfield``: sources detected in real and generated deep fields, compared.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate_deepfield.py --real '$GALRAY_SHARED/deepfield-4096.fits' --generated '$GALRAY_SHARED/field.fits' --out '$GALRAY_SHARED/report-df'

Arguments are those of ``galray evaluate deepfield``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate", "deepfield"]))
