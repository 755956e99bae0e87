"""The HTTP transport (FastAPI): a thin layer over SelectorService. See `create_app`."""

from selector_service.http_api.main import create_app

__all__ = ["create_app"]
