"""Dependencies of the HTTP routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from pcm_contract.models import RUN_ID_DESCRIPTION, RUN_ID_PATTERN
from selector_service.auth import TokenAuth
from selector_service.metrics import Metrics
from selector_service.service import SelectorService
from selector_service.settings import Settings


def get_service(request: Request) -> SelectorService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics | None:
    return request.app.state.metrics


def get_auth(request: Request) -> TokenAuth:
    return request.app.state.auth


ServiceDep = Annotated[SelectorService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics | None, Depends(get_metrics)]
AuthDep = Annotated[TokenAuth, Depends(get_auth)]
# The run id, its pattern in the OpenAPI document (a mismatch is 422 naming `run_id`).
RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN, description=RUN_ID_DESCRIPTION)]


def require_auth(request: Request, auth: AuthDep) -> None:
    """Bearer-token check (a no-op unless PCM_AUTH_TOKENS is set); raises Unauthenticated."""
    auth.check(request.headers.get("authorization"))
