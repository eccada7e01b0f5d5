"""The import direction is one way: a package imports only packages below it.

The layers, bottom up (docs/architecture.md, "Packages and what they may import"):
errors; policy; config; aws and telemetry; routing; coordination, store and the
simulator; salesforce; sources and jobs; operations; service; cli; ``__main__``.
A module may import its own package and any layer below its own, nothing else:
sources and jobs depend on coordination and routing, never the reverse, and
nothing but ``__main__`` imports the CLI, nothing but the CLI the service.
Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import amt_ingest

PACKAGE = Path(amt_ingest.__file__).parent

LAYERS: list[set[str]] = [
    {"__init__", "errors"},
    {"policy"},
    {"config"},
    {"aws", "telemetry"},
    {"routing"},
    {"coordination", "store", "simulator"},
    {"salesforce"},
    {"sources", "jobs"},
    {"operations"},
    {"service"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def top(module: str) -> str:
    """The layer name of a module of the package (``amt_ingest.routing.events`` -> routing)."""
    parts = module.split(".")
    assert parts[0] == "amt_ingest", module
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    return imports_of(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_of(source: str, name: str, *, is_package: bool) -> set[str]:
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("amt_ingest")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("amt_ingest"):
                found.add(target)
                if target == "amt_ingest":  # from amt_ingest import x: x is a module or a name
                    found |= {f"amt_ingest.{a.name}" for a in node.names}
    return found


def upward(own: str, targets: set[str]) -> list[str]:
    return sorted(
        target
        for target in targets
        if top(target) != own and top(target) in LEVEL and LEVEL[top(target)] >= LEVEL[own]
    )


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "versions" not in p.parts)


def test_every_top_level_part_has_a_layer() -> None:
    tops = {top(module_name(p)) for p in modules()}
    assert tops <= set(LEVEL), sorted(tops - set(LEVEL))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path: Path) -> None:
    own = top(module_name(path))
    wrong = upward(own, imported(path))
    assert not wrong, f"{own} (layer {LEVEL[own]}) imports upwards or sideways: {wrong}"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("amt_ingest.routing.router", "from ..coordination import Coordinator"),
        ("amt_ingest.coordination.handoff", "def f():\n    from ..jobs import run_job"),
        ("amt_ingest.jobs.apply", "import amt_ingest.service"),
        ("amt_ingest.sources.sqs", "from ..operations.deadletters.sink import DeadLetters"),
        ("amt_ingest.store.records", "from ..simulator.truth import iso_ms"),
    ],
)
def test_the_check_catches_an_import_against_the_direction(module: str, source: str) -> None:
    assert upward(top(module), imports_of(source, module, is_package=False))


def test_the_check_allows_what_the_layers_allow() -> None:
    assert not upward(
        "jobs", imports_of("from ..store import Store", "amt_ingest.jobs.apply", is_package=False)
    )
    assert not upward(
        "routing",
        imports_of("from .events import Event", "amt_ingest.routing.router", is_package=False),
    )
