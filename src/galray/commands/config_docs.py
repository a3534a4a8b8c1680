"""Every field of a config dataclass, with its type, default and meaning, for ``galray config
show`` and ``docs/config.md`` (``scripts/gen_config_docs.py``).

Meanings come from where galray documents its config fields: the class docstring's
``name: text`` items (``a / b: text`` for several fields; a subclass's item wins over its
base's), else a ``# comment`` on the field's line, else -- for a nested section -- the first
sentence of the section class's docstring.  Nothing is duplicated here, so the reference cannot
drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # a field without a default


@dataclass(frozen=True)
class FieldDoc:
    """One field: dotted ``name``, ``type`` as written for a user, ``default`` (or REQUIRED),
    ``meaning`` (empty when undocumented), ``section`` (a nested config) and ``within`` (the
    optional section it lives in, whose fields apply only when that section is given)."""

    name: str
    type: str
    default: Any
    meaning: str
    section: bool = False
    within: str | None = None


@dataclass(frozen=True)
class Kind:
    """A config ``galray config show`` knows: its class, the command it configures and, for a
    sweep, the YAML section it is (``tune``)."""

    name: str
    title: str
    command: str
    loader: str  # "module:attribute" of the dataclass
    section: str | None = None
    example: str | None = None

    def config_cls(self) -> type:
        """The dataclass: ``module:Name``, or ``module:TrainJobConfig`` for the one job config
        a product's ``config`` module defines (its spec, which imports MLflow and Ray's
        trainer, is left alone: it takes seconds)."""
        import importlib

        from galray.training.config import TrainJobConfig

        module, attr = self.loader.split(":")
        namespace = importlib.import_module(module)
        if attr != "TrainJobConfig":
            return getattr(namespace, attr)
        (job,) = (
            c
            for c in vars(namespace).values()
            if isinstance(c, type) and issubclass(c, TrainJobConfig) and c.__module__ == module
        )
        return job


def kinds() -> dict[str, Kind]:
    """The configs that can be shown: each product's training job, ``emulate`` and ``tune``."""
    from galray.products import PRODUCTS

    out = {}
    for name, package in PRODUCTS.items():
        out[name] = Kind(
            name,
            f"{name} training job",
            f"galray train {name} --config FILE",
            f"{package}.config:TrainJobConfig",
            example=f"configs/{name}-smoke.yaml",
        )
    out["emulate"] = Kind(
        "emulate",
        "emulate run",
        "galray emulate: its options, chunk_rows as --shard-rows",
        "galray.emulator.emulate:EmulateConfig",
    )
    out["tune"] = Kind(
        "tune",
        "sweep settings",
        "galray tune PRODUCT --config FILE, its tune: section",
        "galray.tune.search_space:TuneSettings",
        section="tune",
        example="configs/tune-emulator-smoke.yaml",
    )
    return out


def resolve_kind(name: str) -> Kind:
    """The :class:`Kind` called ``name`` (product aliases such as ``sgan`` included)."""
    from galray.errors import ConfigError
    from galray.products import ALIASES

    known = kinds()
    name = ALIASES.get(name, name)
    if name not in known:
        raise ConfigError(f"KIND: {name!r} is not a config (known: {', '.join(known)})")
    return known[name]


# --------------------------------------------------------------------------------------------
# Walking the fields
# --------------------------------------------------------------------------------------------
def _nested(tp: Any) -> tuple[type | None, bool]:
    """The dataclass inside ``tp`` (``X`` or ``X | None``) and whether it is optional."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp, False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return args[0], True
    return None, False


def type_name(tp: Any) -> str:
    """``tp`` as a user reads it: ``int``, ``str | None``, ``tuple[float, float]``, ``one of
    gan, flow``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def walk(cls: type, prefix: str = "", defaults: Any = None, within: str | None = None):
    """Every init field of dataclass ``cls``, then, depth first, its nested sections, as
    :class:`FieldDoc` rows.  ``defaults``: the parent's default instance of ``cls``, whose values
    are the defaults in that position (a section's default may differ from its class's)."""
    hints = typing.get_type_hints(cls)
    meanings = field_meanings(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    # a class's own fields first, then its sections, so each section's rows stay together
    fields.sort(key=lambda f: _nested(hints[f.name])[0] is not None)
    for f in fields:
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        nested, optional = _nested(tp)
        meaning = meanings.get(f.name, "")
        if nested is not None:
            meaning = meaning or _first_sentence(nested.__doc__)
            yield FieldDoc(name, type_name(tp), default, meaning, section=True, within=within)
            inner = default if dataclasses.is_dataclass(default) else None
            yield from walk(nested, f"{name}.", inner, within=name if optional else within)
        else:
            yield FieldDoc(name, type_name(tp), default, meaning, within=within)


# --------------------------------------------------------------------------------------------
# Meanings from the docstrings
# --------------------------------------------------------------------------------------------
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def clean(text: str) -> str:
    """reST to plain text: roles to their target's last name, double backticks to single."""
    text = _ROLE.sub(lambda m: "`" + m[1].split(".")[-1] + "`", text)
    return " ".join(text.replace("``", "`").split())


def _first_sentence(doc: str | None) -> str:
    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s+[A-Z]|$)", text)
    return clean(m[1] if m else text)


@functools.cache
def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> meaning, from the docstrings of ``cls`` and its dataclass bases (the most
    derived class that documents a field wins), then trailing ``# comments``."""
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass.__doc__:
            out.update(_docstring_items(klass.__doc__, names))
    for name, comment in _field_comments(cls).items():
        out.setdefault(name, comment)
    return out


def _docstring_items(doc: str, names: list[str]) -> dict[str, str]:
    """``name: text`` items of a docstring's paragraphs.  An item starts a paragraph or a
    sentence; a label may list several fields (``a / b (unit): text``, ``a, b: text``)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    item = rf"(?:{alternatives})(?:\s*\([^()]*\))?"
    label = re.compile(rf"(?<![\w`.])({item}(?:\s*(?:/|,)\s*{item})*)\s*:(?=\s|$)")
    out: dict[str, str] = {}
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        text = " ".join(paragraph.split())
        starts = [
            m
            for m in label.finditer(text)
            if not text[: m.start()].strip() or text[: m.start()].rstrip()[-1] in ".;"
        ]
        for m, following in zip(starts, [*starts[1:], None], strict=False):
            body = text[m.end() : following.start() if following else len(text)].strip()
            plain = re.sub(r"\([^()]*\)", "", m[1])
            fields = re.findall(rf"\b(?:{alternatives})\b", plain)
            if re.match(r"(of|in|per) ", body):  # "epochs: of 30 batches" continues the label
                body = f"{' '.join(m[1].split())} {body}"
            described = body if fields == [m[1].strip()] else f"{m[1].strip()}: {body}"
            for name in fields:
                out[name] = clean(described)
    return out


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = value  # comment`` -> {name: comment}, for the fields ``cls`` defines."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    own = set(inspect.get_annotations(cls))
    lines = source.splitlines()
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        m = re.match(r"\s*(\w+)\s*:", lines[tok.start[0] - 1])
        if m and m[1] in own:
            out[m[1]] = clean(tok.string.lstrip("#").strip())
    return out


# --------------------------------------------------------------------------------------------
# A kind's fields, its resolved config, and how they are shown
# --------------------------------------------------------------------------------------------
def fields_of(kind: Kind) -> list[FieldDoc]:
    """Every field of ``kind``, named as in its YAML (a sweep's settings under ``tune.``)."""
    prefix = f"{kind.section}." if kind.section else ""
    return list(walk(kind.config_cls(), prefix))


def resolve(kind: Kind, path: str | None, overrides: list[str]) -> Any:
    """``kind``'s config from YAML file ``path`` with ``--set`` overrides (errors name the file
    or the field); for a sweep, its ``tune:`` section."""
    from galray.config import apply_overrides, from_dict, load_yaml

    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    if kind.section:
        return from_dict(kind.config_cls(), data.get(kind.section) or {}, prefix=f"{kind.section}.")
    return from_dict(kind.config_cls(), data)


_UNSET = object()


def value_at(obj: Any, name: str, section: str | None = None) -> Any:
    """The value of dotted field ``name`` in config ``obj`` (``_UNSET`` inside an absent
    optional section)."""
    parts = name.split(".")[1:] if section else name.split(".")
    for part in parts:
        if obj is None:
            return _UNSET
        obj = getattr(obj, part)
    return obj


def format_value(value: Any) -> str:
    """A value as it would be written in the YAML config."""
    if value is REQUIRED:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return (
            value if value and value.strip() == value and value[0] not in "[{'\"" else repr(value)
        )
    if isinstance(value, tuple | list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}" if 1e-4 <= abs(value) < 1e6 or value == 0 else repr(value)
    return str(value)


def _plain(value: Any) -> Any:
    from galray.config import to_dict

    return to_dict(value) if dataclasses.is_dataclass(value) else value


def changed(row: FieldDoc, value: Any) -> bool:
    """Whether a leaf field's resolved ``value`` differs from its default."""
    if row.section or value is _UNSET:
        return False
    if isinstance(value, tuple | list) and isinstance(row.default, tuple | list):
        return list(value) != list(row.default)
    return _plain(value) != _plain(row.default)


def render_text(kind: Kind, resolved: Any = None, *, only_changed: bool = False, width=100):
    """``galray config show``'s listing: a heading per section, then per field ``name: type =
    default`` (``-> value`` and a leading ``*`` where the resolved config differs) and its
    meaning, wrapped."""
    import textwrap

    lines = [f"{kind.name}: the {kind.title} config ({kind.command})"]
    if resolved is not None:
        lines.append("* marks a field whose value differs from its default")
    rows = fields_of(kind)
    shown = []
    for row in rows:
        value = value_at(resolved, row.name, kind.section) if resolved is not None else _UNSET
        if only_changed and not changed(row, value):
            continue
        shown.append((row, value))
    for row, value in shown:
        if row.section:
            if only_changed:
                continue
            note = f"; default {format_value(row.default)}" if row.default is None else ""
            given = ""
            if resolved is not None and value is not _UNSET and row.default is None:
                given = ", given" if value is not None else ", not given"
            lines += ["", f"[{row.name}] {row.type}{note}{given}: {row.meaning}".rstrip(": ")]
            continue
        mark = "*" if changed(row, value) else " "
        text = f"{mark} {row.name}: {row.type} = {format_value(row.default)}"
        if mark == "*":
            text += f" -> {format_value(value)}"
        lines.append(text)
        meaning = row.meaning or "(undocumented)"
        lines += textwrap.wrap(meaning, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    if only_changed and not any(not r.section for r, _ in shown):
        lines.append("(every field has its default)")
    return "\n".join(lines) + "\n"


def render_markdown(kind: Kind) -> str:
    """``kind``'s fields as a Markdown section of ``docs/config.md``."""
    out = [f"## `{kind.name}`: the {kind.title}", "", f"Used by `{kind.command}`."]
    if kind.example:
        out.append(f"Example: `{kind.example}`.")
    out += ["", "| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for row in fields_of(kind):
        default = f"`{_cell(format_value(row.default))}`"
        if row.section and row.default is not None:
            default = "section"
        name = f"**{row.name}**" if row.section else f"`{row.name}`"
        cells = [name, _cell(row.type), default, _cell(row.meaning)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    """The whole of ``docs/config.md``."""
    head = [
        "# Config reference",
        "",
        "Every field of every galray config: its type, default and meaning.  Generated from the",
        "config dataclasses by `python scripts/gen_config_docs.py` (a test fails when this file",
        "is out of date); `galray config show KIND --config FILE --set key=value` prints the same",
        "for one config with the values it resolves to.  Nested fields are written with dots",
        "(`flow.width`), in a YAML file as nested mappings and on the command line as",
        "`--set flow.width=128`.  Fields of a section whose default is `null` (such as",
        "`data.simulate`) apply when the section is given.",
        "",
    ]
    body = [render_markdown(kind) for kind in kinds().values()]
    return "\n".join(head) + "\n" + "\n".join(body)
