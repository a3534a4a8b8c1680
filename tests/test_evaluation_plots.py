"""Paper-quality figures of the fidelity reports: every figure as PNG (>= 200 dpi) and PDF, a
title naming the model, the rows and the seed, error bars and residual panels, a log colour
scale with a colour bar on the colour-magnitude diagram.  The figure objects are inspected
(norms, scales, error-bar containers), not pixels."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from galray.evaluation import emulator as ev
from galray.evaluation import plots
from test_evaluation import BANDS, _inputs, _measure

N_ROWS = 6000


@pytest.fixture(scope="module")
def frames():
    truth = _inputs(N_ROWS)
    return _measure(truth, 10, probability="p_detect"), _measure(truth, 11)


@pytest.fixture(scope="module")
def drawn(frames, tmp_path_factory, monkeypatch_module):
    """The report with plots, and every figure it saved (name -> Figure)."""
    figures = {}
    save = plots.save_figure

    def keep(fig, out, name, written=None):
        figures[name] = fig
        save(fig, out, name, written)

    monkeypatch_module.setattr(plots, "save_figure", keep)
    out = tmp_path_factory.mktemp("plots")
    report = ev.fidelity_report(*frames, out, seed=7, model="galray-emulator-smoke v3")
    return report, out, figures


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_every_figure_is_written_as_png_at_200_dpi_and_as_pdf(drawn):
    report, out, figures = drawn
    assert report["plots"] and set(report["plots"]) == set(figures)
    for name in report["plots"]:
        png, pdf = out / name, (out / name).with_suffix(".pdf")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-", pdf
        dpi = Image.open(png).info["dpi"]
        assert min(dpi) >= 199.5, (name, dpi)


def test_titles_name_the_model_the_rows_and_the_seed(drawn):
    report, _, figures = drawn
    for name, fig in figures.items():
        title = fig._suptitle.get_text()
        assert "galray-emulator-smoke v3" in title, name
        assert f"N = {report['n_rows']:,} rows" in title and "seed 7" in title, name


def test_colour_magnitude_diagram_has_a_log_colour_scale_a_colour_bar_and_a_residual(frames):
    fig = Figure()
    plots.colour_magnitude(*frames, BANDS, fig)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 3 and len(bars) == 2
    ref_mesh, emu_mesh = panels[0].collections[0], panels[1].collections[0]
    assert isinstance(ref_mesh.norm, LogNorm) and ref_mesh.norm is emu_mesh.norm  # one scale
    counts = max(ref_mesh.get_array().max(), emu_mesh.get_array().max())
    assert (ref_mesh.norm.vmin, ref_mesh.norm.vmax) == (1.0, counts)  # 1 row .. the fullest bin
    assert "log" in bars[0].get_ylabel()
    residual = panels[2].collections[0]
    assert not isinstance(residual.norm, LogNorm) and residual.norm.vmin == -residual.norm.vmax


def _errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_comparisons_have_error_bars_and_residual_panels(frames, drawn):
    _, out, _ = drawn
    tables = {"dmag": ev.pd.read_csv(out / "dmag_by_true_mag.csv")}
    fig = Figure()
    plots.dmag_vs_true_mag(tables["dmag"], BANDS, fig)
    axes = np.array(fig.axes).reshape(3, len(BANDS))
    assert all(len(_errorbars(ax)) >= 2 for ax in axes[0])  # reference and emulated
    assert axes[2, 0].get_ylabel() == "emulated - reference" and _errorbars(axes[2, 0])
    # the errors are the means' standard errors from the table
    t = tables["dmag"][tables["dmag"].band == BANDS[0]]
    ref_bar = _errorbars(axes[0, 0])[0]
    segments = [seg for seg in ref_bar.lines[2][0].get_segments() if len(seg) == 2]
    half = np.array([abs(seg[1, 1] - seg[0, 1]) / 2 for seg in segments])
    want = (t.ref_std / np.sqrt(t.ref_count)).to_numpy()
    want = want[np.isfinite(want) & np.isfinite(t.ref_mean.to_numpy())]
    assert len(half) == len(want) > 3
    np.testing.assert_allclose(half, want, rtol=1e-6)

    # a table read from Arrow holds nullable columns (pd.NA in empty bins): drawn the same
    nullable = tables["dmag"].convert_dtypes()
    assert nullable.isna().any().any() and str(nullable.ref_std.dtype) == "Float64"
    again = Figure()
    plots.dmag_vs_true_mag(nullable, BANDS, again)
    again_bar = _errorbars(np.array(again.axes).reshape(3, len(BANDS))[0, 0])[0]
    np.testing.assert_array_equal(again_bar.lines[0].get_ydata(), ref_bar.lines[0].get_ydata())

    hist = Figure()
    plots.magnitude_histograms(*frames, BANDS, hist)
    top = hist.axes[0]
    assert top.get_yscale() == "log" and _errorbars(top)
    assert len(hist.axes) == 2 * len(BANDS)

    det = ev.detection_table(*frames, band="i")
    for draw in (plots.detection_vs_true_mag, plots.detection_vs_depth):
        fig = Figure()
        draw(det, "i", fig)
        top, bottom = fig.axes
        assert _errorbars(top) and _errorbars(bottom), draw.__name__
        assert bottom.get_ylabel() == "emulated - reference"
