"""Evaluation of models against known truth.

* :mod:`galray.evaluation.emulator`: fidelity of a transfer-function emulator
  (:func:`~galray.evaluation.emulator.fidelity_report`; reports are logged to MLflow with
  :func:`galray.tracking.log_report`);
* :mod:`galray.evaluation.selection`: the survey selection's fraction per bin and the n(z)
  of the selected galaxies per tomographic bin, with sampling errors;
* :mod:`galray.evaluation.plots`: the PNG figures of the emulator fidelity report;
* :mod:`galray.evaluation.deepfield`: fidelity of generated deep-field images.

Import the submodule you need; this package re-exports nothing.
"""
