"""`pcm-selector`'s flags: one per pydantic-settings field, defaulting to the environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from selector_service.cli import settings_options


def test_settings_fields_become_options_that_default_to_the_environment() -> None:
    class S(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="APP_")
        port: int = Field(default=80, description="the port")
        store: str = Field(default="memory", description="where state lives")
        debug: bool = Field(default=False, description="debug mode")

    options = {o.name: o for o in settings_options(S, {"store": "memory (one process)"})}
    assert options["port"].flag == "--port" and options["port"].annotation == int | None
    assert options["port"].help == "The port (env APP_PORT)."
    assert options["store"].show_default == "memory (one process)"
    assert options["debug"].show_default == "false"
