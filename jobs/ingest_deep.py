"""Job entrypoint of ``galray ingest deep``: a deep-field truth catalog to Parquet shards.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest_deep.py '$GALRAY_SHARED/raw/deep_*.fits' --columns configs/columns/des_y6_deep_example.yaml --out '$GALRAY_SHARED/deep' --survey des-y6

Arguments are those of ``galray ingest deep``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["ingest", "deep"]))
