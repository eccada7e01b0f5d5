"""README.md's configuration table lists exactly the settings of ``Settings``, with their
defaults.

The table's format (README.md says it above the table): one row per setting or per
group of settings; in the variable cell ``A, B`` are two settings and ``A / B`` two
names of one setting (all of its names, the primary one first); in the default cell
one entry per setting in the same order (or a single entry for all of them), each a
backticked literal or an en dash (no default: ``None`` or empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic_core import PydanticUndefined

from amt_ingest.config import Settings, env_name

README = Path(__file__).resolve().parents[2] / "README.md"
NO_DEFAULT = "\N{EN DASH}"


@dataclass(frozen=True)
class Row:
    line: int
    groups: list[list[str]]  # settings, each as its names
    defaults: list[str]


def configuration_rows(text: str) -> list[Row]:
    """The rows of the first table under ``## Configuration``."""
    lines = text.splitlines()
    start = lines.index("## Configuration")
    rows: list[Row] = []
    in_table = False
    for number, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == "variable" or set(cells[0]) <= {"-", " "}:
            continue
        assert len(cells) == 3, f"README.md:{number}: a row needs 3 cells: {line}"
        groups = [
            [_code(name, number) for name in group.split(" / ")] for group in cells[0].split(", ")
        ]
        defaults = [d.strip() for d in cells[1].split(", ")]
        rows.append(Row(number, groups, defaults))
    return rows


def _code(cell: str, line: int) -> str:
    match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cell.strip())
    assert match, f"README.md:{line}: {cell!r} is not one backticked variable name"
    return match.group(1)


def field_names(name: str) -> list[str]:
    """Every environment name of a field, its primary name (``env_name``) first."""
    names = [env_name(name)]
    alias = Settings.model_fields[name].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    for choice in choices:
        if isinstance(choice, str) and choice.upper() not in names:
            names.append(choice.upper())
    return names


def field_default(name: str) -> Any:
    info = Settings.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    assert info.default is not PydanticUndefined, f"{name} has no default"
    return info.default


def default_matches(documented: str, value: Any) -> bool:
    """Whether a default cell entry says ``value``."""
    if documented == NO_DEFAULT:
        return value is None or value == "" or value == []
    match = re.fullmatch(r"`([^`]+)`", documented)
    if match is None:
        return False
    text = match.group(1)
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, int | float):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, Path):
        return Path(text) == value
    return value is not None and text == str(value)


def by_env_name() -> dict[str, str]:
    """Environment name -> field name, for every name of every field."""
    names: dict[str, str] = {}
    for field in Settings.model_fields:
        for name in field_names(field):
            assert name not in names, f"{name} names two settings"
            names[name] = field
    return names


ROWS = configuration_rows(README.read_text())


def test_the_table_is_found_and_well_formed():
    assert len(ROWS) >= 20
    for row in ROWS:
        assert len(row.defaults) in (1, len(row.groups)), (
            f"README.md:{row.line}: {len(row.groups)} settings but {len(row.defaults)} defaults"
        )


def test_every_setting_is_listed_once_with_all_its_names():
    names = by_env_name()
    listed: dict[str, int] = {}
    for row in ROWS:
        for group in row.groups:
            unknown = [n for n in group if n not in names]
            assert not unknown, f"README.md:{row.line}: {unknown} are not settings"
            fields = {names[n] for n in group}
            assert len(fields) == 1, (
                f"README.md:{row.line}: {' / '.join(group)} are not one setting"
            )
            field = fields.pop()
            assert group == field_names(field), (
                f"README.md:{row.line}: write {' / '.join(field_names(field))} for {field}"
            )
            assert field not in listed, (
                f"README.md:{row.line}: {field} is also on line {listed[field]}"
            )
            listed[field] = row.line
    missing = sorted(env_name(f) for f in Settings.model_fields if f not in listed)
    assert not missing, f"settings missing from README.md's configuration table: {missing}"


def test_every_documented_default_is_the_settings_default():
    names = by_env_name()
    wrong = []
    for row in ROWS:
        defaults = row.defaults * len(row.groups) if len(row.defaults) == 1 else row.defaults
        for group, documented in zip(row.groups, defaults, strict=True):
            field = names[group[0]]
            value = field_default(field)
            if not default_matches(documented, value):
                wrong.append(
                    f"README.md:{row.line}: {group[0]} says {documented}, default {value!r}"
                )
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("documented", "value", "ok"),
    [
        (NO_DEFAULT, None, True),
        (NO_DEFAULT, [], True),
        (NO_DEFAULT, "x", False),
        ("`true`", True, True),
        ("`false`", True, False),
        ("`1`", True, False),
        ("`30`", 30.0, True),
        ("`0.05`", 0.05, True),
        ("`20000`", 2000, False),
        ("`./a.jsonl`", Path("a.jsonl"), True),
        ("`info`", "info", True),
        ("info", "info", False),
        ("`otlp`", None, False),
    ],
)
def test_default_normalisation(documented: str, value: Any, ok: bool):
    assert default_matches(documented, value) is ok


def test_a_malformed_table_is_refused():
    text = "## Configuration\n\n| variable | default | meaning |\n| --- | --- | --- |\n"
    assert configuration_rows(text + "| `AMT_X`, `AMT_Y` | `1` | two |\n")[0].groups == [
        ["AMT_X"],
        ["AMT_Y"],
    ]
    with pytest.raises(AssertionError, match="not one backticked variable"):
        configuration_rows(text + "| `AMT_HTTP_PORT` (and AMT_HTTP_HOST) | `1` | x |\n")
