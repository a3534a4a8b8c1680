"""Evaluation of models against known truth.

* :mod:`galray.evaluation.emulator`: fidelity of a transfer-function emulator
  (:func:`fidelity_report`, :func:`log_report_to_mlflow`);
* :mod:`galray.evaluation.deepfield`: fidelity of generated deep-field images.
"""

from __future__ import annotations

__all__ = ["fidelity_report", "log_report_to_mlflow"]


def __getattr__(name: str):
    # lazy, so importing one evaluation does not pull in the other's dependencies
    if name in __all__:
        from galray.evaluation import emulator

        return getattr(emulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
