"""HTTP endpoints for the orchestrator: ``/healthz`` (alive) and ``/readyz`` (ready)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

__all__ = ["HealthServer", "readiness"]

Check = Callable[[], Awaitable[tuple[bool, str]]]


def readiness(results: dict[str, tuple[bool, str]]) -> tuple[bool, dict[str, Any]]:
    ok = all(good for good, _ in results.values())
    return ok, {"ready": ok, "checks": {k: {"ok": g, "detail": d} for k, (g, d) in results.items()}}


class HealthServer:
    def __init__(self, *, host: str, port: int, checks: dict[str, Check]):
        self.host = host
        self.port = port
        self.checks = checks
        self.started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
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
