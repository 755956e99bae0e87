"""docker-compose.yml, the Dockerfiles and .dockerignore, checked without a Docker engine.

Validation: `docker compose config` (Compose v2 CLI) parses the file, checks it against the
Compose Specification's JSON schema that compose-go embeds, interpolates variables and resolves
paths; it needs no engine. The structural tests below read the YAML as written and check what
the schema cannot: files it builds from or mounts exist, the selector's PCM_* settings and
ports agree with docs/design.md, "Selector settings" (and with selector_service.settings),
healthchecks, startup order, persistence, scaling and Grafana's admin settings.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_OVERRIDE = REPO_ROOT / "deploy" / "compose.gpu.yml"

EXPECTED_SERVICES = {"redis", "selector", "prometheus", "grafana", "trainer"}
LONG_RUNNING = ("redis", "selector", "prometheus", "grafana")
# docs/design.md, "Selector settings": the selector's settings that compose sets.
DESIGN_SELECTOR_ENV = {
    "PCM_STORE",
    "PCM_REDIS_URL",
    "PCM_GRPC_PORT",
    "PCM_HTTP_PORT",
    "PCM_AUTH_TOKENS",
    "PCM_LOG_LEVEL",
}
DEFAULT_GRPC_PORT = 50051
DEFAULT_HTTP_PORT = 8000
TEST_PASSWORD = "test-password-not-used"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def env_dict(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a dict, from either the map or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = item.partition("=")
            out[key] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def env_int(service: dict[str, Any], key: str) -> int:
    value = env_dict(service).get(key)
    assert value is not None, f"{key} is not set"
    return int(value)


def command_argv(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return test if isinstance(test, str) else " ".join(map(str, test or []))


def container_port(spec: Any) -> int:
    """Container (target) port of a `ports` entry: "H:C", "IP:H:C", "C", or long syntax."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of each bind mount (short or long syntax)."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((vol["source"], vol["target"]))
            continue
        source, _, rest = vol.partition(":")
        if source.startswith((".", "/", "~")):
            out.append((source, rest.split(":")[0]))
    return out


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> container target of each named-volume mount."""
    out = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "volume":
                out[vol["source"]] = vol["target"]
            continue
        source, _, rest = vol.partition(":")
        if rest and not source.startswith((".", "/", "~")):
            out[source] = rest.split(":")[0]
    return out


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = REPO_ROOT / (build if isinstance(build, str) else build.get("context", "."))
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return context / name


def settings_env_names(settings_cls: type) -> dict[str, Any]:
    """Environment variable name -> FieldInfo of a pydantic-settings class."""
    config = getattr(settings_cls, "model_config", {})
    prefix = config.get("env_prefix", "")
    out = {}
    for name, field in getattr(settings_cls, "model_fields", {}).items():
        alias = field.validation_alias or field.alias
        choices = getattr(alias, "choices", None)
        if isinstance(alias, str):
            keys = [alias]
        elif choices:
            keys = [c for c in choices if isinstance(c, str)]
        else:
            keys = [prefix + name]
        for key in keys:
            out[key.upper()] = field
    return out


# --------------------------------------------------------------------------------------------
# validation by the Compose CLI
# --------------------------------------------------------------------------------------------


def test_compose_config_validates(run_compose) -> None:
    out = run_compose("config", "--format", "json", env={"GRAFANA_ADMIN_PASSWORD": TEST_PASSWORD})
    assert out.returncode == 0, f"docker compose config failed:\n{out.stderr}"
    config = json.loads(out.stdout)
    assert set(config["services"]) == EXPECTED_SERVICES
    selector_env = config["services"]["selector"]["environment"]
    assert selector_env["PCM_STORE"] == "redis"
    assert selector_env["PCM_REDIS_URL"] == "redis://redis:6379/0"
    # Unset on the caller's side: passed through as unset, never as an empty string.
    assert selector_env.get("PCM_AUTH_TOKENS") is None
    grafana_env = config["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == TEST_PASSWORD
    trainer_cmd = config["services"]["trainer"]["command"]
    assert trainer_cmd[:2] == ["pcm-train", "rl"]
    assert trainer_cmd[trainer_cmd.index("--run-id") + 1] == "demo"


def test_compose_config_run_id_from_environment(run_compose) -> None:
    out = run_compose(
        "config",
        "--format",
        "json",
        env={"GRAFANA_ADMIN_PASSWORD": TEST_PASSWORD, "PCM_RUN_ID": "exp-42"},
    )
    assert out.returncode == 0, out.stderr
    cmd = json.loads(out.stdout)["services"]["trainer"]["command"]
    assert cmd[cmd.index("--run-id") + 1] == "exp-42"


def test_compose_requires_grafana_password(run_compose) -> None:
    out = run_compose("config", "--quiet")
    assert out.returncode != 0, "compose must refuse to run without GRAFANA_ADMIN_PASSWORD"
    assert "GRAFANA_ADMIN_PASSWORD" in out.stderr


def test_gpu_override_validates(run_compose) -> None:
    out = run_compose(
        "config",
        "--format",
        "json",
        env={"GRAFANA_ADMIN_PASSWORD": TEST_PASSWORD},
        files=(GPU_OVERRIDE,),
    )
    assert out.returncode == 0, out.stderr
    trainer = json.loads(out.stdout)["services"]["trainer"]
    assert "cuda" in trainer["build"]["args"]["BASE_IMAGE"]
    assert "/whl/cu" in trainer["build"]["args"]["TORCH_INDEX_URL"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


# --------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------


def test_services(services) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_build_contexts_and_dockerfiles_exist(services) -> None:
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(built) == {"selector", "trainer"}
    for name, service in built.items():
        dockerfile = dockerfile_of(service)
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert dockerfile.parent.is_relative_to(REPO_ROOT)
        # A fixed image name, so `--scale` reuses one build.
        assert service.get("image"), f"{name}: give the built image a name"


def test_bind_mount_sources_exist(services) -> None:
    # Compose silently creates a missing bind source as an empty directory: catch it here.
    for name, service in services.items():
        for source, target in bind_mounts(service):
            path = (REPO_ROOT / source).resolve()
            assert path.exists(), f"{name}: bind source {source} (-> {target}) does not exist"
            assert path.is_relative_to(REPO_ROOT), f"{name}: {source} is outside the repo"


def test_named_volumes(compose, services) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in named_volume_mounts(service):
            assert volume in declared, f"{name}: volume {volume} not declared at top level"
    assert named_volume_mounts(services["redis"]).get("redis-data") == "/data"
    assert named_volume_mounts(services["prometheus"]), "prometheus: keep the TSDB on a volume"
    assert named_volume_mounts(services["grafana"]), "grafana: keep its database on a volume"


def test_redis_persists_with_aof(services) -> None:
    argv = command_argv(services["redis"])
    assert "--appendonly" in argv
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert "ports" not in services["redis"], "Redis needs no published port"


def test_healthchecks(services) -> None:
    for name in LONG_RUNNING:
        hc = services[name].get("healthcheck")
        assert hc, f"{name}: no healthcheck"
        assert not hc.get("disable"), f"{name}: healthcheck disabled"
        assert healthcheck_text(services[name]).strip(), f"{name}: empty healthcheck test"
        for key in ("interval", "timeout", "retries"):
            assert key in hc, f"{name}: healthcheck without {key}"
    assert "ping" in healthcheck_text(services["redis"])
    assert "/readyz" in healthcheck_text(services["selector"])
    assert "9090" in healthcheck_text(services["prometheus"])
    assert "/api/health" in healthcheck_text(services["grafana"])


def test_depends_on_conditions(services) -> None:
    def cond(service: str, dep: str) -> str | None:
        deps = services[service].get("depends_on") or {}
        assert isinstance(deps, dict), f"{service}: use depends_on with conditions"
        return (deps.get(dep) or {}).get("condition")

    assert cond("selector", "redis") == "service_healthy"
    assert cond("trainer", "selector") == "service_healthy"
    assert cond("grafana", "prometheus") == "service_healthy"
    # Prometheus must keep running (and alerting) while the selector is down.
    assert "selector" not in (services["prometheus"].get("depends_on") or {})


def _settings_module():
    """selector_service.settings once it exists (None before); it must import if it exists."""
    if importlib.util.find_spec("selector_service") is None or (
        importlib.util.find_spec("selector_service.settings") is None
    ):
        return None
    return importlib.import_module("selector_service.settings")


def test_selector_env_names_are_design_settings(services) -> None:
    env = env_dict(services["selector"])
    pcm_vars = {k for k in env if k.startswith("PCM_")}
    module = _settings_module()
    known = DESIGN_SELECTOR_ENV | (
        set(settings_env_names(module.Settings)) if module is not None else set()
    )
    assert pcm_vars <= known, f"not selector settings: {pcm_vars - known}"
    assert env["PCM_STORE"] == "redis"
    assert env["PCM_REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in services
    # Secrets are never written into the file: passed through from the caller's environment.
    assert env.get("PCM_AUTH_TOKENS") is None


def test_selector_ports_match_settings(services) -> None:
    selector = services["selector"]
    grpc, http = env_int(selector, "PCM_GRPC_PORT"), env_int(selector, "PCM_HTTP_PORT")
    assert (grpc, http) == (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT)
    assert {container_port(p) for p in selector["ports"]} == {grpc, http}
    assert f":{http}/readyz" in healthcheck_text(selector)
    argv = command_argv(selector)
    assert argv[:2] == ["pcm-selector", "serve"]


def test_selector_env_against_settings_module(services) -> None:
    """selector_service.settings.Settings must accept every PCM_* name compose sets, and
    DESIGN's list, with DESIGN's default ports."""
    module = _settings_module()
    assert module is not None, "selector_service.settings does not import"
    assert hasattr(module, "Settings"), "selector_service.settings has no Settings class"
    names = settings_env_names(module.Settings)
    assert set(names) >= DESIGN_SELECTOR_ENV, f"missing: {DESIGN_SELECTOR_ENV - set(names)}"
    used = {k for k in env_dict(services["selector"]) if k.startswith("PCM_")}
    assert used <= set(names), f"compose sets unknown settings: {used - set(names)}"
    for var, port in (("PCM_GRPC_PORT", DEFAULT_GRPC_PORT), ("PCM_HTTP_PORT", DEFAULT_HTTP_PORT)):
        default = names[var].default
        assert default in (port, str(port)), f"{var} default {default!r}, DESIGN says {port}"


def test_trainer_scales_on_one_run(services) -> None:
    trainer = services["trainer"]
    grpc = env_int(services["selector"], "PCM_GRPC_PORT")
    cmd = trainer["command"]
    text = cmd if isinstance(cmd, str) else " ".join(cmd)
    argv = text.split()
    assert argv[:2] == ["pcm-train", "rl"]
    assert argv[argv.index("--selector") + 1] == f"grpc://selector:{grpc}"
    # One run id for every replica, overridable from the environment.
    assert argv[argv.index("--run-id") + 1] == "${PCM_RUN_ID:-demo}"
    # Distinct trainer ids come from each replica's hostname: nothing may pin them.
    assert "--trainer-id" not in argv, "a fixed --trainer-id would give every replica one id"
    for key in ("container_name", "hostname", "ports"):
        assert key not in trainer, f"trainer: `{key}` breaks --scale"


def test_grafana_admin_and_no_anonymous_admin(services) -> None:
    env = env_dict(services["grafana"])
    password = env.get("GF_SECURITY_ADMIN_PASSWORD") or ""
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), (
        "admin password must come from ${GRAFANA_ADMIN_PASSWORD:?...}, with no default"
    )
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert str(env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer")).lower() != "admin"
    assert str(env.get("GF_AUTH_DISABLE_LOGIN_FORM", "false")).lower() == "false"
    assert str(env.get("GF_AUTH_BASIC_ENABLED", "true")).lower() == "true"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"


def test_prometheus_loopback_only(services) -> None:
    # Prometheus has no authentication: publish it on the loopback interface only.
    for spec in services["prometheus"].get("ports", []):
        host_ip = spec.get("host_ip") if isinstance(spec, dict) else str(spec).split(":")[0]
        assert host_ip == "127.0.0.1", f"prometheus port {spec} is not loopback-only"


# --------------------------------------------------------------------------------------------
# Dockerfiles, .dockerignore, console scripts
# --------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _final_user(instructions: list[str]) -> str | None:
    users = [i.split(None, 1)[1] for i in instructions if i.upper().startswith("USER ")]
    return users[-1] if users else None


def test_selector_dockerfile(services) -> None:
    ins = _instructions(dockerfile_of(services["selector"]))
    text = "\n".join(ins)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert all("${PYTHON_IMAGE}" in i for i in ins if i.upper().startswith("FROM "))
    user = _final_user(ins)
    assert user and user.split(":")[0] not in ("root", "0"), "runs as root"
    healthcheck = [i for i in ins if i.upper().startswith("HEALTHCHECK")]
    assert healthcheck and "/healthz" in healthcheck[-1]
    assert re.search(r"pip install .*--no-deps \.", text), "installs the project with pip"
    assert "torch" not in text, "the selector image installs no torch (only the selector extra)"
    assert re.search(r"python scripts/requirements\.py selector\b", text), (
        "installs the selector extra's requirements only")
    assert 'CMD ["pcm-selector", "serve"]' in ins
    assert f"EXPOSE {DEFAULT_GRPC_PORT} {DEFAULT_HTTP_PORT}" in ins


def test_trainer_dockerfile(services) -> None:
    ins = _instructions(dockerfile_of(services["trainer"]))
    text = "\n".join(ins)
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE}" in ins
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    assert re.search(r"pip install \"\.\[trainer", text), "installs the trainer extra"
    user = _final_user(ins)
    assert user and user.split(":")[0] not in ("root", "0"), "runs as root"
    args = services["trainer"]["build"].get("args", {})
    assert set(args) <= {"BASE_IMAGE", "TORCH_VERSION", "TORCH_INDEX_URL", "PCM_EXTRAS"}


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus `**`), as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i : j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching it or
    one of its parent directories decides; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = _dockerignore_regex(raw.lstrip("!").strip("/"))
        if any(rx.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore(repo_root) -> None:
    lines = (repo_root / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    needed = [
        "pyproject.toml",
        "README.md",
        "pcm_contract/__init__.py",
        "pcm_contract/gen/pcm/v1/selector_pb2.py",
        "selector_service/__init__.py",
        "selector_service/core/algorithm.py",
        "trainer_client/cli.py",
        "pcm_bench/cli.py",
        "protos/pcm/v1/selector.proto",
        "scripts/requirements.py",
    ]
    for path in needed:
        assert not dockerignored(path, patterns), f".dockerignore drops {path}"
    junk = [
        ".git/config",
        ".venv/bin/python",
        "tests/deploy/test_compose.py",
        "runs/demo/ckpt.pt",
        "selector_service/__pycache__/x.cpython-311.pyc",
        "trainer_client/policy.pyc",
        "docker-compose.yml",
        ".env",
        "scripts/test.sh",
    ]
    for path in junk:
        assert dockerignored(path, patterns), f".dockerignore lets {path} into the context"


def test_console_scripts_exist_for_compose_commands(services, repo_root) -> None:
    """The commands the containers run are pyproject console scripts (docs/design.md, "Console
    commands")."""
    scripts = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(scripts.get("project", {}).get("scripts", {}))
    used = {command_argv(services["selector"])[0], command_argv(services["trainer"])[0]}
    assert used == {"pcm-selector", "pcm-train"}
    missing = used - declared
    assert not missing, f"pyproject.toml does not declare {sorted(missing)}"
