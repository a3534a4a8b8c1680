"""A measurement yardstick applied to generated stamps (``galray evaluate stamps --estimator``).

Real test stamps and the generated stamps made for the same properties (observed through the
same PSF and noise) are measured by the same estimator.  Per conditioned property, the real
stamps' *estimated minus true* and the generated stamps' *estimated minus requested* are
compared: a generator that draws a galaxy "at radius 0.5 arcsec" should measure like a real
galaxy of radius 0.5 arcsec, including the estimator's own bias at that radius.  The verdict per
property: ``|bias_generated - bias_real| <= scatter_real`` (the real stamps' scatter), with the
standard errors of both biases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def judge_generated(
    names: list[str],
    real_estimate: pd.DataFrame,
    generated_estimate: pd.DataFrame,
    truth: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, dict]:
    """One row per property of ``names``: bias and scatter of real and generated stamps and the
    verdict; and the report's flat numbers (``judge_<stat>_<property>``, ``judge_within``)."""
    rows, flat = [], {}
    for name in names:
        t = np.asarray(truth[name], np.float64)
        real = real_estimate[name].to_numpy(np.float64) - t
        gen = generated_estimate[name].to_numpy(np.float64) - t
        n = len(t)
        row = {
            "property": name,
            "n": n,
            "bias_real": float(real.mean()),
            "bias_real_se": float(real.std(ddof=1) / np.sqrt(n)),
            "scatter_real": float(real.std(ddof=1)),
            "bias_generated": float(gen.mean()),
            "bias_generated_se": float(gen.std(ddof=1) / np.sqrt(n)),
            "scatter_generated": float(gen.std(ddof=1)),
        }
        row["bias_difference"] = row["bias_generated"] - row["bias_real"]
        row["within_real_scatter"] = bool(abs(row["bias_difference"]) <= row["scatter_real"])
        rows.append(row)
        for key in ("bias_real", "bias_generated", "scatter_real", "bias_difference"):
            flat[f"judge_{key}_{name}"] = row[key]
    table = pd.DataFrame(rows)
    flat["judge_within"] = bool(table["within_real_scatter"].all()) if len(table) else False
    return table, flat
