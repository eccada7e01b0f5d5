"""deploy/compose.yaml and deploy/Dockerfile, checked without a container engine: the
commands parse with the real command line, the service's environment passes the real
settings validation, the wiring between services agrees, and the image's HEALTHCHECK
command tells a live /healthz from a dead one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from amt_ingest.cli import _parser
from amt_ingest.config import load_settings
from amt_ingest.operations.health import HealthServer
from amt_ingest.simulator import options_from_args

DEPLOY = Path(__file__).parents[2] / "deploy"


def compose() -> dict[str, Any]:
    """The compose file with variables at their defaults, as `docker compose` reads it."""
    text = (DEPLOY / "compose.yaml").read_text()
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)
    assert not re.search(r"\$\{[^}]*\}", text.replace("$$", "")), "a variable without a default"
    return dict(yaml.safe_load(text.replace("$$", "$")))


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every instruction ``name`` in deploy/Dockerfile, continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(name + " ")]
    assert lines, name
    return [line[len(name) + 1 :].strip() for line in lines]


def dockerfile_instruction(name: str) -> str:
    """The last instruction ``name`` (the one in the final stage)."""
    return dockerfile_instructions(name)[-1]


def test_published_ports_are_on_loopback_and_dependencies_exist() -> None:
    doc = compose()
    services = doc["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in doc["volumes"], (name, volume)


def test_commands_parse_with_the_real_command_line() -> None:
    services = compose()["services"]
    for name in ("bootstrap", "simulator", "service", "worker"):
        args = _parser().parse_args(services[name]["command"])
        expected = {"bootstrap": "bootstrap", "simulator": "simulate", "service": "run"}
        assert args.command == expected.get(name, name)
    assert _parser().parse_args(services["service"]["command"]).no_worker
    simulator = options_from_args(_parser().parse_args(services["simulator"]["command"]))
    assert simulator.host == "0.0.0.0"


def test_the_service_environment_is_valid_and_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    env = environment(services["service"])
    for name in list(os.environ):
        if name.startswith(("AMT_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    sim_args = _parser().parse_args(services["simulator"]["command"])
    boot_args = _parser().parse_args(services["bootstrap"]["command"])
    assert settings.sqs_queue_urls == sim_args.sqs_queue_urls
    assert settings.sqs_queue_urls[0].endswith("/" + boot_args.queue_name)
    assert settings.read_token() == sim_args.token
    assert settings.passport_ws_url == f"ws://simulator:{sim_args.port}/stream"
    assert settings.salesforce_base_url == f"http://simulator:{sim_args.sf_port}"
    assert settings.allowed_org_ids == [options_from_args(sim_args).org_id]
    assert settings.database_url.startswith("postgresql+asyncpg://")
    postgres = environment(services["postgres"])
    assert (
        f"//{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{postgres['POSTGRES_DB']}" in settings.database_url
    )
    assert settings.redis_url.startswith("redis://redis:6379/")
    (published,) = services["service"]["ports"]
    host_ports, container_port = published.removeprefix("127.0.0.1:").split(":")
    first, last = (int(p) for p in host_ports.split("-"))
    assert int(container_port) == settings.http_port
    # One published port per replica.
    assert last - first + 1 == services["service"]["deploy"]["replicas"]
    assert environment(services["worker"]) == env
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_SERVICE_NAME"] == "amt_ingest"
    for name in ("bootstrap", "simulator"):
        assert environment(services[name])["AWS_ENDPOINT_URL"] == settings.aws_endpoint_url


def test_two_intake_replicas_and_two_workers() -> None:
    services = compose()["services"]
    assert services["service"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["depends_on"] == services["service"]["depends_on"]
    assert "ports" not in services["worker"]


def test_start_order_and_durability() -> None:
    services = compose()["services"]
    conditions = {k: v["condition"] for k, v in services["service"]["depends_on"].items()}
    assert conditions["bootstrap"] == "service_completed_successfully"
    assert conditions["redis"] == conditions["postgres"] == "service_healthy"
    assert services["simulator"]["depends_on"]["bootstrap"] == {
        "condition": "service_completed_successfully"
    }
    assert services["bootstrap"]["healthcheck"] == {"disable": True}
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_image_runs_the_cli_as_an_unprivileged_user() -> None:
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["python", "-m", "amt_ingest"]
    assert json.loads(dockerfile_instruction("CMD")) == ["run"]
    user = dockerfile_instruction("USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert dockerfile_instructions("FROM") == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    assert any(
        a.startswith("PYTHON_IMAGE=python:3.11-slim") for a in dockerfile_instructions("ARG")
    )


async def test_the_image_healthcheck_tells_alive_from_dead() -> None:
    healthcheck = dockerfile_instruction("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[0] == "python"
    server = HealthServer(host="127.0.0.1", port=0, checks={})
    await server.start()
    env = {**os.environ, "AMT_HTTP_PORT": str(server.bound_port)}

    def probe() -> int:
        run = subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, check=False)
        return run.returncode

    try:
        assert await asyncio.to_thread(probe) == 0
    finally:
        await server.stop()
    assert await asyncio.to_thread(probe) != 0
