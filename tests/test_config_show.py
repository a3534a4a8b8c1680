"""``galray config show``: every field of every config with its type, default and meaning, the
values a config file resolves to, ``docs/config.md`` kept in step, and ``--dry-run`` of train
and tune (the checks, nothing started)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from galray.cli import main
from galray.commands.config_docs import _docstring_items, reference
from galray.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def dotted_fields(cls: type, prefix: str = "") -> list[str]:
    """Every field of dataclass ``cls`` and its nested (also optional) dataclass sections,
    dotted -- walked here without galray's walker."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out.append(prefix + f.name)
        candidates = [tp]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            candidates = list(typing.get_args(tp))
        for c in candidates:
            if isinstance(c, type) and dataclasses.is_dataclass(c):
                out += dotted_fields(c, f"{prefix}{f.name}.")
    return out


def show(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["config", "show", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def field_lines(text: str) -> dict[str, str]:
    """``name -> the field's line`` of the text listing (``[section]`` headings included)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^[* ] (\S+): ", line) or re.match(r"^\[(\S+)\] ", line)
        if m:
            out[m[1]] = line
    return out


def config_classes():
    from galray.emulator.emulate import EmulateConfig
    from galray.products import get_product
    from galray.tune.search_space import TuneSettings

    return {
        "emulator": (get_product("emulator").config_cls, ""),
        "deepfield": (get_product("deepfield").config_cls, ""),
        "stamps": (get_product("stamps").config_cls, ""),
        "emulate": (EmulateConfig, ""),
        "tune": (TuneSettings, "tune."),
    }


@pytest.mark.parametrize("kind", ["emulator", "deepfield", "stamps", "emulate", "tune"])
def test_show_lists_every_field(capsys, kind):
    cls, prefix = config_classes()[kind]
    expected = dotted_fields(cls, prefix)
    code, out, _ = show(capsys, kind)
    assert code == 0
    listed = field_lines(out)
    assert sorted(listed) == sorted(expected)
    assert len(expected) > 10


def test_show_emulator_types_defaults_meanings(capsys):
    _, out, _ = show(capsys, "emulator")
    lines = out.splitlines()
    listed = field_lines(out)
    assert listed["flow.width"] == "  flow.width: int = 64"
    assert listed["model"] == "  model: one of gan, flow = gan"
    assert listed["data.fractions"].endswith("tuple[float, float, float] = [0.9, 0.05, 0.05]")
    assert listed["scaling.torch_threads"].endswith("int | None = null")
    # a meaning follows its field, from the class docstrings (a base class's for epochs & co)
    after = {lines[i].split(":")[0].strip(): lines[i + 1].strip() for i in range(len(lines) - 1)}
    assert after["flow.width"].startswith("width / depth: hidden units and hidden layers")
    assert after["seed"] == "initialisation, data order and noise."
    assert after["tracking.alias"].startswith("the alias that version gets")
    assert after["optim.gp_weight"] == "gradient-penalty weight."
    # the defaults in a section are its owner's: EmulatorTracking's, not TrackingConfig's
    assert listed["tracking.experiment"].endswith("= galray-emulator")


def test_sgan_is_deepfield(capsys):
    assert show(capsys, "sgan")[1] == show(capsys, "deepfield")[1]


def test_resolved_values_and_differences(capsys):
    config = str(CONFIGS / "emulator-smoke.yaml")
    code, out, _ = show(capsys, "emulator", "--config", config, "--set", "flow.width=128")
    assert code == 0
    listed = field_lines(out)
    assert listed["flow.width"] == "* flow.width: int = 64 -> 128"
    assert listed["flow.depth"] == "  flow.depth: int = 2"  # unchanged: no mark, no value
    smoke = yaml.safe_load((CONFIGS / "emulator-smoke.yaml").read_text())
    assert listed["epochs"] == f"* epochs: int = 20 -> {smoke['epochs']}"

    code, changed, _ = show(capsys, "emulator", "--config", config, "--changed")
    names = set(field_lines(changed))
    assert "epochs" in names and "flow.width" not in names and "seed" not in names
    assert all(
        line.startswith("*")
        for line in changed.splitlines()[2:]
        if ": " in line[:60] and not line.startswith(" " * 6)
    )


def test_yaml_format_is_the_resolved_config(capsys, tmp_path):
    from galray.products import get_product

    config = CONFIGS / "deepfield-smoke.yaml"
    code, out, _ = show(capsys, "deepfield", "--config", str(config), "--format", "yaml")
    assert code == 0
    written = tmp_path / "resolved.yaml"
    written.write_text(out)
    cls = get_product("deepfield").config_cls
    assert to_dict(load_config(cls, written)) == to_dict(load_config(cls, config))


def test_tune_section_resolved(capsys):
    config = str(CONFIGS / "tune-emulator-smoke.yaml")
    code, out, _ = show(capsys, "tune", "--config", config, "--set", "tune.num_samples=3")
    assert code == 0
    listed = field_lines(out)
    assert listed["tune.num_samples"] == "* tune.num_samples: int = 8 -> 3"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["emulator", "--set", "flow.widht=3"], "flow.widht"),
        (["emulator", "--set", "flow.width=wide"], "flow.width"),
        (["deepfield", "--set", "precision=fp16"], "precision"),
        (["tune", "--set", "tune.scheduler=pbt"], "tune.scheduler"),
        (["emulator", "--config", "configs/nope.yaml"], "configs/nope.yaml"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(capsys, argv, field):
    code, out, err = show(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("galray: error: ") and field in err


def test_unknown_kind_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["config", "show", "telescope"])
    assert exc.value.code == 2
    assert "emulator" in capsys.readouterr().err


def test_docs_config_md_is_up_to_date():
    text = (ROOT / "docs" / "config.md").read_text()
    assert text == reference(), "docs/config.md is out of date: run scripts/gen_config_docs.py"


def test_docs_config_md_has_every_field():
    text = (ROOT / "docs" / "config.md").read_text()
    for kind, (cls, prefix) in config_classes().items():
        section = text.split(f"## `{kind}`")[1].split("\n## ")[0]
        for name in dotted_fields(cls, prefix):
            assert f"`{name}`" in section or f"**{name}**" in section, (kind, name)


def test_docstring_items():
    doc = """Summary line: not an item (``width: 3`` inside code neither).

    width / depth (px): hidden units and layers.  bins: spline segments
    per transform.  epochs: of 30 batches.  Mentioning width: here is mid-sentence.

    a, b: two at once; the last item ends at the paragraph.

    Notes: unrelated.
    """
    items = _docstring_items(doc, ["width", "depth", "bins", "epochs", "a", "b", "notes"])
    assert items["width"] == items["depth"] == "width / depth (px): hidden units and layers."
    assert items["bins"] == "spline segments per transform."
    assert items["epochs"] == "epochs of 30 batches. Mentioning width: here is mid-sentence."
    assert items["a"] == items["b"] == "a, b: two at once; the last item ends at the paragraph."
    assert "notes" not in items  # a field is named exactly


def _dry(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def forbid_ray_start(monkeypatch):
    """A dry run must not start Ray: ``ray.init`` and galray's ``init_ray`` raise if called.
    (Asserting ``not ray.is_initialized()`` afterwards failed whenever an earlier test of the
    session had started Ray, and missed an ``init_ray`` that returns early on such a Ray.)"""
    import ray

    from galray.training import ray_env

    def refuse(*_args, **_kwargs):
        raise AssertionError("the dry run started Ray")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray_env, "init_ray", refuse)


def _nothing_started(tmp_path: Path, before: set) -> None:
    assert set(tmp_path.rglob("*")) == before  # nothing written, no storage, no mlflow.db


def test_tune_dry_run_checks_without_starting(capsys, tmp_path, monkeypatch, forbid_ray_start):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = ["tune", "emulator", "--config", str(CONFIGS / "tune-emulator-smoke.yaml"),
            "--set", f"train.data.survey={tmp_path}/missing", "--set",
            f"train.storage_path={tmp_path}/runs", "--set", f"tune.storage_path={tmp_path}/tune",
            "--dry-run"]  # fmt: skip
    before = set(tmp_path.rglob("*"))
    code, out, err = _dry(capsys, base)
    assert code == 0, err
    assert "search space (8 fields):" in out and "  net.depth: randint(2, 4)" in out
    assert re.search(
        r"^  would data.survey: .*missing does not exist: the run simulates", out, re.M
    )
    assert re.search(rf"^  ok    tune.storage_path: {tmp_path}/tune will be created", out, re.M)
    _nothing_started(tmp_path, before)

    code, out, err = _dry(capsys, [*base, "--set", "train.data.simulate_if_missing=false"])
    assert code == 2
    assert re.search(r"^  FAIL  data.survey: .*missing does not exist", out, re.M)
    assert err.strip() == "galray: error: dry run: 1 check(s) failed"
    _nothing_started(tmp_path, before)


def test_dry_run_refuses_more_cpus_than_the_machine_has(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out, _ = _dry(capsys, [
        "tune", "emulator", "--config", str(CONFIGS / "tune-emulator-smoke.yaml"),
        "--set", "train.scaling.num_workers=512", "--set", f"tune.storage_path={tmp_path}/t",
        "--set", f"train.storage_path={tmp_path}/r", "--dry-run",
    ])  # fmt: skip
    assert code == 2
    assert re.search(r"^  FAIL  scaling.cpus_per_worker: 512 worker\(s\) x 0.4 CPUs", out, re.M)


def test_train_dry_run_opens_the_data_and_starts_nothing(
    capsys, tmp_path, monkeypatch, forbid_ray_start
):
    from galray.datasets.simulate import SurveyConfig, simulate_survey

    survey = tmp_path / "survey"
    cfg = SurveyConfig(n_injections=3000, n_deep=1000, nside=32, seed=1, write_fits_maps=False)
    simulate_survey(survey, cfg, log=lambda *_: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = set(tmp_path.rglob("*"))
    argv = ["train", "emulator", "--config", str(CONFIGS / "emulator-flow-smoke.yaml"),
            "--set", f"data.survey={survey}", "--set", "data.simulate_if_missing=false",
            "--set", f"storage_path={tmp_path}/runs", "--dry-run"]  # fmt: skip
    code, out, err = _dry(capsys, argv)
    assert code == 0, err
    assert re.search(rf"^\* data.survey: str \| None = survey -> {survey}$", out, re.M)
    assert re.search(r"^  ok    data: .*\d", out, re.M)  # the catalog, opened: its rows
    assert re.search(rf"^  ok    storage_path: {tmp_path}/runs will be created", out, re.M)
    assert out.rstrip().endswith("dry run: nothing started (no Ray, no MLflow)")
    _nothing_started(tmp_path, before)

    code, out, _ = _dry(capsys, [*argv, "--resume", "flow-1234"])
    assert code == 0 and "  note  --resume flow-1234" in out


@pytest.mark.parametrize(
    ("product", "field", "simulate"),
    [("deepfield", "data.image", False), ("stamps", "data.stamps", True)],
)
def test_train_dry_run_missing_data(
    capsys, tmp_path, monkeypatch, product, field, simulate, forbid_ray_start
):
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    argv = ["train", product, "--config", str(CONFIGS / f"{product}-smoke.yaml"),
            "--set", f"{field}={tmp_path}/absent", "--set", f"storage_path={tmp_path}/runs",
            "--set", f"data.simulate_if_missing={str(simulate).lower()}", "--dry-run"]  # fmt: skip
    code, out, _ = _dry(capsys, argv)
    status = "would" if simulate else "FAIL "
    assert re.search(rf"^  {status} {field}: {tmp_path}/absent", out, re.M), out
    assert code == (0 if simulate else 2)
    _nothing_started(tmp_path, before)


@pytest.mark.parametrize("kind", ["emulator", "deepfield", "stamps", "emulate", "tune"])
def test_every_field_has_a_meaning(kind):
    """A new config field needs a ``name: meaning`` item in its class docstring."""
    from galray.commands.config_docs import fields_of, resolve_kind

    missing = [row.name for row in fields_of(resolve_kind(kind)) if not row.meaning]
    assert not missing, f"undocumented {kind} config fields (add 'name: meaning' items): {missing}"


def test_product_config_classes_are_the_specs():
    from galray.commands.config_docs import resolve_kind
    from galray.products import PRODUCTS, get_product

    for name in PRODUCTS:
        assert resolve_kind(name).config_cls() is get_product(name).config_cls
