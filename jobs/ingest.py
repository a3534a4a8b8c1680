"""Job entrypoint of ``galray ingest``: survey catalogs and HEALPix maps -> Parquet, on the cluster.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest.py catalog '$GALRAY_SHARED/raw/balrog.fits' \\
        --columns configs/columns/des_y3_example.yaml --out '$GALRAY_SHARED/catalog' --nside 4096
    ... -- python jobs/ingest.py maps psf_fwhm_r=... depth_r=... --out '$GALRAY_SHARED/maps'

The first argument picks what (``catalog`` or ``maps``).  Input files must be readable on the
head node, where the job's driver runs (a shared folder, or files in the working directory).
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["ingest"]))
