"""amt_ingest.aws.SERVICE_SQS_CALLS (what deploy/cloudformation.yaml grants the service) is
exactly the set of SQS client methods the service's code refers to.

"The service's code" is every module that amt_ingest/service.py imports, directly or through
other modules of the package (the simulator and the operator commands of cli.py are not
among them), less the functions listed in OPERATOR_ONLY.
"""

from __future__ import annotations

import ast
from pathlib import Path

import botocore.session
from botocore import xform_name

from amt_ingest import aws

PACKAGE = Path(aws.__file__).parent
#: Functions inside service modules that only operator commands call.
OPERATOR_ONLY = {PACKAGE / "aws.py": {"bootstrap"}}


def _functions(path: Path) -> set[str]:
    return {
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def _operations(service: str) -> set[str]:
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name) for name in model.operation_names}


def _module_file(parts: list[str]) -> Path | None:
    path = PACKAGE.parent.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    """The package's modules that ``path`` imports (anywhere in it, lazy imports included)."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            targets = [module, *([*module, alias.name] for alias in node.names)]
        for parts in targets:
            if parts and parts[0] == PACKAGE.name and (file := _module_file(parts)):
                found.add(file)
    return found


def service_modules() -> set[Path]:
    seen: set[Path] = set()
    todo = [PACKAGE / "service.py"]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imports(path) - seen)
    return seen


def _references(
    path: Path, methods: set[str], *, receiver_hint: str | None = None, skip: set[str]
) -> set[str]:
    """Attribute references ``<expr>.<method>`` in ``path`` outside the functions named in
    ``skip`` (calls and ``functools.partial(client.method, ...)`` alike); with
    ``receiver_hint``, only where ``<expr>`` mentions it."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in skip:
            return
        if (
            isinstance(node, ast.Attribute)
            and node.attr in methods
            and (receiver_hint is None or receiver_hint in ast.unparse(node.value).lower())
        ):
            found.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def service_references(methods: set[str], *, receiver_hint: str | None = None) -> set[str]:
    return set().union(
        *(
            _references(p, methods, receiver_hint=receiver_hint, skip=OPERATOR_ONLY.get(p, set()))
            for p in service_modules()
        )
    )


def test_service_modules_are_found() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in service_modules()}
    assert {"service.py", "aws.py", "operations/deadletters/sink.py", "sources/sqs.py"} <= modules
    assert "operations/deadletters/command.py" not in modules
    assert not {m for m in modules if m.startswith("simulator") or m == "cli.py"}


def test_sqs_calls_table_is_what_the_service_calls() -> None:
    called = service_references(_operations("sqs"))
    declared = set().union(*aws.SERVICE_SQS_CALLS.values())
    assert called == declared


def test_the_service_makes_no_sns_call() -> None:
    assert service_references(_operations("sns"), receiver_hint="sns") == set()


def test_bootstrap_is_left_out_and_would_be_seen() -> None:
    # The walker does see client calls: bootstrap's, once it is not skipped.
    aws_py, sqs_methods = PACKAGE / "aws.py", _operations("sqs")
    seen = _references(aws_py, sqs_methods, skip=OPERATOR_ONLY[aws_py])
    with_bootstrap = _references(aws_py, sqs_methods, skip=set())
    assert {"create_queue", "set_queue_attributes"} <= with_bootstrap - seen
    sns_in_bootstrap = _references(aws_py, _operations("sns"), receiver_hint="sns", skip=set())
    assert {"create_topic", "subscribe"} <= sns_in_bootstrap


def test_dlq_operator_table_is_what_the_dlq_command_calls() -> None:
    sqs_methods = _operations("sqs")
    called = set().union(
        *(
            _references(p, sqs_methods, skip=set())
            for p in (PACKAGE / "operations" / "deadletters").glob("*.py")
        )
    )
    # It finds each DLQ through aws.dead_letter_queue_url (which the service uses too).
    assert (
        "dead_letter_queue_url"
        in (PACKAGE / "operations" / "deadletters" / "places.py").read_text()
    )
    everything_but = {n for n in _functions(PACKAGE / "aws.py") if n != "dead_letter_queue_url"}
    called |= _references(PACKAGE / "aws.py", sqs_methods, skip=everything_but)
    assert called == set().union(*aws.DLQ_OPERATOR_SQS_CALLS.values())
    assert "purge_queue" not in called
