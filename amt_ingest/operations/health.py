"""HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (ready) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Check", "HealthServer", "readiness", "sources_readiness"]

Check = Callable[[], Awaitable[tuple[bool, str]]]
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def readiness(results: dict[str, tuple[bool, str]]) -> tuple[bool, dict[str, Any]]:
    ok = all(good for good, _ in results.values())
    return ok, {"ready": ok, "checks": {k: {"ok": g, "detail": d} for k, (g, d) in results.items()}}


def sources_readiness(
    *,
    ws_enabled: bool,
    ws_connected: bool,
    ws_standby: bool = False,
    ws_down_for: float | None,
    ws_fatal: str | None,
    sqs_enabled: bool,
    sqs_ok: bool,
    grace_s: float,
) -> tuple[bool, str]:
    """Ready while either path takes events, or while the WebSocket stands by
    (another replica holds the lease and listens; this one takes over when it
    goes). A WebSocket down for less than ``grace_s`` (a reconnect) still counts
    as taking them."""
    ws_ok = (
        ws_enabled
        and ws_fatal is None
        and (ws_standby or ws_connected or (ws_down_for is not None and ws_down_for < grace_s))
    )
    if ws_fatal is not None:
        ws_state = "stopped"
    elif ws_standby:
        ws_state = "standby"
    elif ws_connected:
        ws_state = "up"
    elif ws_down_for is not None:
        ws_state = f"down {ws_down_for:.0f}s"
    else:
        ws_state = "down"
    detail = (
        f"websocket={ws_state if ws_enabled else 'off'} "
        f"sqs={('up' if sqs_ok else 'failing') if sqs_enabled else 'off'}"
    )
    if ws_ok or (sqs_enabled and sqs_ok):
        return True, detail
    return False, detail + f" (websocket down over {grace_s:.0f}s and no SQS poll succeeding)"


class HealthServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        checks: dict[str, Check],
        metrics: Callable[[], bytes] | None = None,
    ):
        self.host = host
        self.port = port
        self.checks = checks
        self.metrics = metrics
        self.started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        body = {"alive": True, "uptime_s": round(time.monotonic() - self.started, 1)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        assert self.metrics is not None
        return web.Response(body=self.metrics(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def _readyz(self, _request: web.Request) -> web.Response:
        results: dict[str, tuple[bool, str]] = {}
        for name, check in self.checks.items():
            try:
                results[name] = await check()
            except Exception as exc:  # a check that fails to run is a failed check
                results[name] = (False, f"{type(exc).__name__}: {exc}")
        ok, body = readiness(results)
        return web.Response(
            status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json"
        )
