"""The help of every ``galray`` parser, walked over the whole tree: one formatter, a
description and an example everywhere, no "(default: None)" and no default said twice, the
environment variables and docs at the top, config files named in help that exist, and one
option name per concept."""

from __future__ import annotations

import argparse
import glob
import re
from pathlib import Path

import pytest

from galray.cli import build_parser, main
from galray.commands.common import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for the root and every group and command, aliases included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


PARSERS = list(walk(build_parser()))
IDS = [" ".join(("galray", *path)) for path, _ in PARSERS]


def test_the_tree_is_complete():
    names = set(IDS)
    for expected in (
        "galray",
        "galray train",
        "galray train sgan",
        "galray tune stamps",
        "galray quickstart",
        "galray config show",
        "galray emulate",
    ):
        assert expected in names
    assert len(PARSERS) > 25


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_one_formatter(path, parser):
    assert parser.formatter_class is HelpFormatter


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_description_and_example(path, parser):
    assert parser.description and len(parser.description.split()) >= 4, parser.prog
    text = parser.format_help()
    examples = [ln.strip() for ln in text.splitlines() if re.match(r"\s+galray \S", ln)]
    assert examples, f"{parser.prog}: no example"
    # a group's examples run its own commands; a command's run itself
    prefix = " ".join(("galray", *path))
    if path and path[-1] != "sgan":  # sgan's examples use the canonical name, deepfield
        assert any(e.startswith(prefix) for e in examples), (prefix, examples)


def _help_strings(parser: argparse.ArgumentParser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        yield action, formatter._expand_help(action)  # as printed, %(default)s filled in


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_defaults_shown_once_and_never_for_required(path, parser):
    for action, text in _help_strings(parser):
        name = "/".join(action.option_strings) or action.dest
        assert "default: None" not in text, (parser.prog, name)
        assert text.lower().count("default") <= 1, (parser.prog, name, text)
        if action.required or not action.option_strings:
            assert "(default:" not in text, (parser.prog, name, text)
    assert "default: None" not in parser.format_help()


def test_top_level_help_lists_environment_and_docs():
    text = build_parser().format_help()
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "GALRAY_SHARED", "GALRAY_CACHE"):
        assert re.search(rf"^\s+{var}\s+\S", text, re.M), var
    assert "docs/" in text and (ROOT / "docs").is_dir()
    assert "config.md" in text and (ROOT / "docs" / "config.md").is_file()


def _config_paths(text: str) -> list[str]:
    return re.findall(r"configs/[\w./*-]*[\w*]\.ya?ml", text)


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_config_files_named_in_help_exist(path, parser):
    text = parser.format_help()
    for named in _config_paths(text):
        assert glob.glob(str(ROOT / named)), f"{parser.prog} names {named}, which does not exist"


def test_tune_sgan_names_existing_configs(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "sgan", "--help"])
    text = capsys.readouterr().out
    named = _config_paths(text)
    assert named
    for path in named:
        assert glob.glob(str(ROOT / path)), path


def test_one_option_name_for_rows_per_shard():
    """Every "... per ... shard" size is --shard-rows, in simulate, ingest and emulate."""
    seen = []
    for _, parser in PARSERS:
        for action in parser._actions:
            if action.help and re.search(r"\bper (\w+ )?shard\b", str(action.help)):
                assert action.option_strings == ["--shard-rows"], (parser.prog, action.help)
                seen.append(parser.prog)
    assert any("emulate" in p for p in seen) and any("ingest" in p for p in seen)


def test_chunk_rows_is_a_hidden_deprecated_alias(capsys):
    parser = build_parser()
    emulate = dict(walk(parser))[("emulate",)]
    assert "--chunk-rows" not in emulate.format_help()
    base = ["emulate", "--model", "m", "--deep", "d", "--maps", "p", "--out", "o"]
    assert parser.parse_args(base).chunk_rows == 500_000
    assert parser.parse_args([*base, "--shard-rows", "300"]).chunk_rows == 300
    assert "deprecated" not in capsys.readouterr().err
    assert parser.parse_args([*base, "--chunk-rows", "300"]).chunk_rows == 300
    assert "--chunk-rows is deprecated; use --shard-rows" in capsys.readouterr().err


def test_help_lines_start_with_a_lowercase_verb_unless_an_acronym():
    for _, parser in PARSERS:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    first = choice.help.split()[0]
                    assert first.islower() or first[:2].isupper(), (parser.prog, choice.help)
