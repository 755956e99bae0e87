"""The FastAPI app factory: routers over the one application layer."""

from __future__ import annotations

from fastapi import FastAPI

import selector_service
from pcm_contract.models import OutcomeReport, RunConfigBody, SelectRequest
from selector_service.auth import TokenAuth
from selector_service.http_api.body import add_body_schemas
from selector_service.http_api.errors import install_error_handlers
from selector_service.http_api.limits import GuardMiddleware
from selector_service.http_api.middleware import SelectMetricsMiddleware
from selector_service.http_api.routes import health, outcomes, runs, select
from selector_service.metrics import Metrics
from selector_service.select_threads import select_executor
from selector_service.service import SelectorService
from selector_service.settings import Settings


def create_app(service: SelectorService, settings: Settings | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    # Swagger UI (/docs) and ReDoc load their scripts from a CDN: off unless PCM_DOCS_UI.
    docs = settings.docs_ui
    app = FastAPI(
        title="PCM chunk selector",
        version=getattr(selector_service, "__version__", "0.1.0"),
        description="Probabilistic Chunk Masking for GRPO: phase scoring and chunk selection.",
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.select_executor = select_executor(settings.select_threads)
    app.state.metrics = metrics
    app.state.auth = TokenAuth(settings.auth_tokens)
    app.state.draining = False
    install_error_handlers(app)
    # Added first, so it runs inside the metrics middleware: refusals are counted too.
    app.add_middleware(GuardMiddleware, auth=app.state.auth,
                       max_body_bytes=settings.max_body_bytes,
                       max_small_body_bytes=settings.max_small_body_bytes,
                       body_timeout_s=settings.body_timeout_s)
    if metrics is not None:
        app.add_middleware(SelectMetricsMiddleware, metrics=metrics)
    for module in (runs, select, outcomes, health):
        app.include_router(module.router)
    add_body_schemas(app, SelectRequest, OutcomeReport, RunConfigBody)
    return app
