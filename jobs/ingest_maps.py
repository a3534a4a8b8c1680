"""Job entrypoint of ``galray ingest maps``: healpy FITS maps to one Parquet condition table.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest_maps.py psf_fwhm_r='$GALRAY_SHARED/raw/r_fwhm.fits' depth_r='$GALRAY_SHARED/raw/r_depth.fits' --out '$GALRAY_SHARED/maps'

Arguments are those of ``galray ingest maps``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["ingest", "maps"]))
