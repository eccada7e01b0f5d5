"""The documentation names only things that exist.

- every ``python -m amt_ingest ...`` in README.md, deploy/README.md and docs/*.md parses
  with the real command line (command, action, options);
- every ``tests/...py::test_name`` in docs/*.md exists, and each promise of
  DESIGN.md section 2 has at least one;
- docs/operations.md's "Log events" table names real log events at their level, and
  lists every warning and error the service logs;
- its alert rules are well-formed and use the metrics the service exports, with the
  labels README.md's metric table gives them;
- its ``dlq`` table lists exactly the actions and options the parser has;
- docs/architecture.md's module map is the package's file list, and it documents
  every Redis key of coordination.py's docstring;
- every ``AMT_*`` variable in docs/*.md is a setting, and every ``#anchor`` link resolves.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from amt_ingest.cli import _parser
from amt_ingest.config import Settings, env_name
from amt_ingest.telemetry import setup_telemetry

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "amt_ingest"
DOCS = sorted((ROOT / "docs").glob("*.md"))
OPERATIONS = ROOT / "docs" / "operations.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
COMMAND_FILES = [ROOT / "README.md", ROOT / "deploy" / "README.md", *DOCS]
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
# A placeholder stands for any value: TOPIC, ORG_ID, EVENT_ID, <id>.
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|<[^>]+>")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- markdown helpers ---------------------------------------------------------------


def code_segments(text: str) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every fenced code line and every inline code span."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield number, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span


def section(text: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading)
    end = len(lines)
    for i in range(start + 1, len(lines)):
        match = re.match(r"(#+) ", lines[i])
        if match and len(match.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start + 1 : end])


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first table in ``text``, as cells."""
    rows: list[list[str]] = []
    started = False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-", " ", ":"} for c in cells):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


# -- commands -----------------------------------------------------------------------


def documented_commands(text: str) -> Iterator[tuple[int, str]]:
    """``(line, arguments)`` of every ``python -m amt_ingest ...`` in code."""
    for number, segment in code_segments(text):
        segment = segment.replace("\\|", "|")
        for match in re.finditer(r"python -m amt_ingest\b(.*)", segment):
            rest = re.split(r"\s+(?:\|\s|&&|;|2?>|#)|`", match.group(1))[0]
            yield number, rest.rstrip(" \\").strip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return parser._option_string_actions.get(name)


def _alternatives(token: str) -> list[str]:
    return [alt for alt in token.split("|") if alt]


def check_command(arguments: str) -> list[str]:
    """What is wrong with ``python -m amt_ingest <arguments>``, by the real parser."""
    parser = _parser()
    try:
        tokens = shlex.split(arguments)
    except ValueError:
        tokens = arguments.split()
    tokens = [t.strip("[]") for t in tokens]
    tokens = [t for t in tokens if t and t not in ("...", "…")]
    if not tokens:
        return []
    head, rest = tokens[0], tokens[1:]
    if head.startswith("-"):
        return [] if _option(parser, head.split("=")[0]) else [f"no option {head}"]
    commands = _subparsers(parser)
    problems = [f"no command {c!r}" for c in _alternatives(head) if c not in commands]
    if problems:
        return problems
    sub = commands[_alternatives(head)[0]]
    positionals = [a for a in sub._actions if not a.option_strings]
    values: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            name = token.split("=")[0]
            action = _option(sub, name)
            if action is None:
                problems.append(f"{head}: no option {name}")
            elif action.nargs != 0:
                if "=" in token:
                    value: str | None = token.split("=", 1)[1]
                else:
                    i += 1  # its value
                    value = rest[i] if i < len(rest) else None
                known = action.choices
                if value is not None and known is not None and not PLACEHOLDER.fullmatch(value):
                    problems += [
                        f"{head}: {name} {alt!r} is not one of {sorted(known)}"
                        for alt in _alternatives(value)
                        if alt not in known
                    ]
        else:
            values.append(token)
        i += 1
    for action in positionals:
        if not values:
            break
        take = len(values) if action.nargs in ("+", "*") else 1
        taken, values = values[:take], values[take:]
        if action.choices is None:
            continue
        for value in taken:
            if PLACEHOLDER.fullmatch(value):
                continue
            problems += [
                f"{head}: {alt!r} is not one of {sorted(action.choices)}"
                for alt in _alternatives(value)
                if alt not in action.choices
            ]
    if values:
        problems.append(f"{head}: unexpected {values}")
    return problems


def test_documented_commands_are_found():
    found = [c for path in COMMAND_FILES for _, c in documented_commands(path.read_text())]
    assert len(found) >= 30
    assert "dlq list" in found and "throttle pause" in found


def test_every_documented_command_parses():
    problems = []
    for path in COMMAND_FILES:
        for line, arguments in documented_commands(path.read_text()):
            problems += [f"{rel(path)}:{line}: {p}" for p in check_command(arguments)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "arguments",
    [
        "dlq frobnicate",
        "dlq list --colour",
        "dlq purge --older-than 7d --everything",
        "dlq list --source s3",
        "dlq replay --topic Account",
        "throttle pause|stop",
        "nosuch",
        "resync Account --since 2026-01-01T00:00:00Z",
        "db migrate",
        "run --workers 2",
        "orgs add 00D5g000004ZzAB extra",
        "status --once --jsn",
    ],
)
def test_the_command_check_refuses_what_the_parser_lacks(arguments: str):
    assert check_command(arguments), arguments


@pytest.mark.parametrize(
    "arguments",
    [
        "",
        "--help",
        "run --no-worker",
        "status --once --json --interval 5",
        "throttle pause|slow|resume|status",
        "throttle slow 4",
        "dlq list|replay --topic T --org O --id ID --dry-run",
        "dlq list --source sqs --reason redriven --older-than 2h --json",
        "dlq list --source=records --topic Opportunity --newer-than 1d --limit 50",
        "dlq show sqs:amt-ingest-monitor-dlq:4c9e…",
        "dlq replay ID... --force --visibility-timeout 120",
        "dlq purge --reason invalid_json --older-than 7d --dry-run --yes",
        "dlq list --source sqs|records|file|all",
        "resync TOPIC --since ISO --org O --rate N --id ID",
        "resync Opportunity --since=2026-11-25T09:00:00Z",
        "db upgrade REVISION",
        "orgs add ORG_ID --note TEXT",
        "trace EVENT_ID...",
        "trace a b c",
        "export -o out.jsonl",
    ],
)
def test_the_command_check_accepts_real_commands(arguments: str):
    assert check_command(arguments) == []


# -- tests named in the docs --------------------------------------------------------

TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_named_in_the_docs_exists():
    missing = []
    count = 0
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for path, name in TEST_REF.findall(line):
                count += 1
                file = ROOT / path
                if not file.is_file() or name not in defined_tests(file):
                    missing.append(f"{rel(doc)}:{number}: {path}::{name}")
    assert count >= 30
    assert not missing, "tests named in the docs that do not exist:\n" + "\n".join(missing)


def test_each_promise_has_its_tests():
    rows = table_rows(section(ARCHITECTURE.read_text(), "## Promises and their proofs"))
    numbers = [int(re.match(r"(\d+)\.", row[0]).group(1)) for row in rows]  # type: ignore[union-attr]
    assert numbers == list(range(1, 9))
    for row in rows:
        assert TEST_REF.findall(row[2]), f"promise {row[0]} names no test"


# -- log events ---------------------------------------------------------------------


def code_log_events() -> dict[str, set[str]]:
    """Event name -> levels, for every structlog call of the service (not the simulator)."""
    events: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "simulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                events.setdefault(node.args[0].value, set()).add(node.func.attr)
            # log_lines(logger, "level", "event", lines): a batch of one event's lines.
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "log_lines"
                and len(node.args) >= 3
                and all(isinstance(a, ast.Constant) for a in node.args[1:3])
            ):
                level, name = node.args[1].value, node.args[2].value  # type: ignore[attr-defined]
                events.setdefault(name, set()).add(level)
    return events


def documented_log_events() -> dict[str, str]:
    """Event name -> level, from the Log events table of docs/operations.md."""
    rows = table_rows(section(OPERATIONS.read_text(), "## Log events"))
    events: dict[str, str] = {}
    for row in rows:
        match = re.fullmatch(r"`([a-z][a-z0-9_]*)`", row[0])
        assert match, f"the Log events table's first cell must be one `event_name`: {row[0]}"
        events[match.group(1)] = row[1]
    return events


def test_the_log_events_table_names_real_events_at_their_level():
    in_code = code_log_events()
    documented = documented_log_events()
    assert len(documented) >= 40
    wrong = [
        f"{name} ({level}): "
        + (f"logged at {sorted(in_code[name])}" if name in in_code else "not logged anywhere")
        for name, level in documented.items()
        if level not in in_code.get(name, set())
    ]
    assert not wrong, "\n".join(wrong)


def test_every_warning_and_error_is_in_the_log_events_table():
    documented = documented_log_events()
    missing = sorted(
        name
        for name, levels in code_log_events().items()
        if levels & {"warning", "error", "exception", "critical"} and name not in documented
    )
    assert not missing, f"add these log events to docs/operations.md's Log events table: {missing}"


def test_log_events_written_in_the_runbook_exist():
    """Backticked snake_case names that look like events (``jq`` selections)."""
    in_code = code_log_events()
    text = OPERATIONS.read_text()
    selected = set(re.findall(r'\.event == "([a-z_]+)"', text))
    selected |= set(re.findall(r'startswith\("([a-z_]+)"\)', text))
    missing = [
        name
        for name in selected
        if name not in in_code and not any(e.startswith(name) for e in in_code)
    ]
    assert selected and not missing, missing


# -- metrics and alert rules ----------------------------------------------------------


def exported_metrics() -> dict[str, set[str]]:
    """Prometheus sample name -> label names, from the real instruments."""
    telemetry = setup_telemetry(Settings.model_construct())
    metrics = telemetry.metrics
    for instrument in vars(metrics).values():
        if hasattr(instrument, "add"):
            instrument.add(1)
        elif hasattr(instrument, "record"):
            instrument.record(1.0)
    metrics.gauges.websocket = lambda: 1
    metrics.gauges.ws_leader = lambda: 1
    metrics.gauges.queues = {"arq": 1}
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(telemetry.prometheus_text().decode()):
        for sample in family.samples:
            if sample.name.startswith("amt_"):
                samples.setdefault(sample.name, set()).update(sample.labels)
    telemetry.shutdown()
    return samples


def readme_metrics() -> dict[str, set[str]]:
    """Metric name -> attributes, from README.md's metric table."""
    readme = (ROOT / "README.md").read_text()
    rows = table_rows(readme[readme.index("| metric (Prometheus name) |") :])
    table: dict[str, set[str]] = {}
    for row in rows:
        # The attribute names: before any explanation after a colon, outside parentheses.
        names = re.sub(r"\([^)]*\)", "", row[2].split(": ")[0])
        attributes = set(re.findall(r"`([a-z_]+)`", names))
        for name in re.findall(r"`(amt_[a-z0-9_]+)`", row[0]):
            table[name] = attributes
    return table


def base_name(sample: str, exported: dict[str, set[str]]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) + "_bucket" in exported:
            return sample.removesuffix(suffix)
    return sample


def test_readme_metric_table_is_what_the_service_exports():
    exported = exported_metrics()
    assert {base_name(s, exported) for s in exported} == set(readme_metrics())


def alert_rules() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS.read_text(), re.S)
    for block in blocks:
        loaded = yaml.safe_load(block)
        assert isinstance(loaded, list), block
        rules += loaded
    return rules


def test_alert_rules_are_well_formed():
    rules = alert_rules()
    assert len(rules) >= 20
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        labels = rule["labels"]
        assert isinstance(labels, dict) and labels["severity"] in {"page", "warning", "ticket"}
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations.get("summary"), rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), rule


def test_alert_rules_use_exported_metrics_and_documented_labels():
    exported = exported_metrics()
    attributes = readme_metrics()
    scrape_labels = {"job", "instance"}
    problems = []
    for rule in alert_rules():
        expr = str(rule["expr"])
        bare = re.sub(r'"[^"]*"', '""', expr)
        used = set(re.findall(r"\bamt_[a-z0-9_]+\b", bare))
        problems += [f"{rule['alert']}: {m} is not exported" for m in used if m not in exported]
        for metric, matchers in re.findall(r"\b(amt_[a-z0-9_]+)\{([^}]*)\}", expr):
            known = attributes.get(base_name(metric, exported), set()) | scrape_labels
            if metric.endswith("_bucket"):
                known.add("le")
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if label not in known:
                    problems.append(f"{rule['alert']}: {metric} has no label {label}")
        everything = set().union(*(attributes.get(base_name(m, exported), set()) for m in used))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                if label not in everything | scrape_labels | {"le"}:
                    problems.append(f"{rule['alert']}: by ({label}) is no label of {used}")
    assert not problems, "\n".join(problems)


def test_every_metric_of_the_readme_has_a_runbook_section():
    headings = re.findall(r"^### (.*)$", OPERATIONS.read_text(), re.M)
    covered = {name for h in headings for name in re.findall(r"`(amt_[a-z0-9_]+)`", h)}
    assert set(readme_metrics()) <= covered, set(readme_metrics()) - covered


# -- dlq: its forms and options ------------------------------------------------------


def test_the_dlq_table_lists_exactly_the_forms_of_the_parser():
    """Every action and option of ``dlq`` once, and nothing the parser lacks; an
    option's form shows a value exactly when the option takes one."""
    rows = table_rows(section(OPERATIONS.read_text(), "### `dlq` forms and options"))
    dlq = _subparsers(_parser())["dlq"]
    choices = next(set(a.choices) for a in dlq._actions if not a.option_strings and a.choices)
    present = {o for a in dlq._actions for o in a.option_strings if o not in ("-h", "--help")}
    wrong = []
    listed = []
    for form_cell, what in rows:
        form, *value = form_cell.strip("`").split()
        listed.append(form)
        if not what:
            wrong.append(f"{form}: say what it does")
        if form.startswith("-"):
            action = _option(dlq, form)
            if action is None:
                wrong.append(f"{form}: the parser has no such option")
            elif bool(value) != (action.nargs != 0):
                takes = "takes a value" if action.nargs != 0 else "takes no value"
                wrong.append(f"{form_cell}: the option {takes}")
        elif form not in choices:
            wrong.append(f"{form}: the parser has no such action")
    assert len(rows) >= 8
    wrong += [
        f"{name} is listed twice" for name in sorted({n for n in listed if listed.count(n) > 1})
    ]
    wrong += [
        f"{name} is missing from the table" for name in sorted((present | choices) - set(listed))
    ]
    assert not wrong, "\n".join(wrong)


# -- architecture ---------------------------------------------------------------------


def test_module_map_is_the_package():
    block = re.search(r"```\n(.*?)```", section(ARCHITECTURE.read_text(), "## Module map"), re.S)
    assert block
    listed = [line.split()[0] for line in block.group(1).splitlines() if line.strip()]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    files = {
        rel(p)
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".lua") and "__pycache__" not in p.parts
    }
    versions = "amt_ingest/store/migrations/versions/"
    expected = {f for f in files if not f.startswith(versions)} | {versions}
    assert set(listed) == expected, {
        "missing": sorted(expected - set(listed)),
        "not files": sorted(set(listed) - expected),
    }


def test_the_redis_key_table_is_the_layout_of_the_gateway():
    from amt_ingest.coordination.keys import LAYOUT

    rows = table_rows(section(ARCHITECTURE.read_text(), "## Redis keys"))
    documented = {row[0].strip("`") for row in rows}
    assert len(LAYOUT) >= 15
    assert documented == set(LAYOUT), {
        "undocumented": sorted(set(LAYOUT) - documented),
        "not in keys.py": sorted(documented - set(LAYOUT)),
    }


def test_every_lua_script_is_described():
    rows = table_rows(section(ARCHITECTURE.read_text(), "## Lua scripts"))
    described = {row[0].strip("`") for row in rows} | {"prelude.lua"}
    scripts = {p.name for p in PACKAGE.rglob("*.lua")}
    assert described == scripts
    assert all(p.parent.name == "coordination" for p in PACKAGE.rglob("*.lua"))


# -- settings and links ---------------------------------------------------------------


def test_every_variable_in_the_docs_is_a_setting():
    names = set()
    for field, info in Settings.model_fields.items():
        names.add(env_name(field))
        alias = info.validation_alias
        names.update(getattr(alias, "choices", [alias] if isinstance(alias, str) else []))
    unknown = [
        f"{rel(doc)}: {name}"
        for doc in DOCS
        for name in sorted(set(re.findall(r"\bAMT_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text())))
        if name not in names
    ]
    assert not unknown, unknown


def slugs(text: str) -> set[str]:
    """GitHub's heading anchors."""
    found = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = re.match(r"#{1,6} (.*)", line)
        if match and not fenced:
            title = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            found.add(title.replace(" ", "-"))
    return found


def test_every_anchor_link_resolves():
    broken = []
    for doc in [ROOT / "README.md", *DOCS]:
        text = doc.read_text()
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
            file = (doc.parent / target).resolve() if target else doc
            if not file.is_file():
                broken.append(f"{rel(doc)}: {target} does not exist")
            elif anchor not in slugs(file.read_text()):
                broken.append(f"{rel(doc)}: {target}#{anchor}")
        for target in re.findall(r"\]\(([^)#\s:]+\.md)\)", text):
            if not (doc.parent / target).is_file():
                broken.append(f"{rel(doc)}: {target} does not exist")
    assert not broken, broken
