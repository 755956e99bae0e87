"""Select metrics for transport="http", as a pure ASGI middleware (no body buffering)."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selector_service.metrics import Metrics, status_of_http

SELECT_PATH = re.compile(r"^/v1/runs/[^/]+/select/?$")


class SelectMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or not SELECT_PATH.match(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "observed": False}

        def observe() -> None:
            if not status["observed"]:
                status["observed"] = True
                self.metrics.observe_select("http", status_of_http(int(status["code"])),
                                            time.perf_counter() - start)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # counted before the last byte leaves: a client that has its answer finds it
                # counted, even if this worker dies right after
                observe()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            observe()  # no complete response (an error before it): counted once here
