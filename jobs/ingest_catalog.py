"""Job entrypoint of ``galray ingest catalog``: survey catalogs (FITS/HDF5/Parquet) to Parquet shards with a HEALPix pixel.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest_catalog.py '$GALRAY_SHARED/raw/balrog_*.fits' --columns configs/columns/des_y3_example.yaml --out '$GALRAY_SHARED/cat' --nside 4096

Arguments are those of ``galray ingest catalog``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["ingest", "catalog"]))
