"""Run a real Prometheus (Debian's `prometheus` binary) for tests: a free 127.0.0.1 port, a given
configuration, a temp TSDB directory, wait for /-/ready, query through the HTTP API, stop.

    from tests.prometheus_server import PrometheusServer

    config = lambda port: local_prometheus_config({"pcm-selector": 18000, "prometheus": port})
    with PrometheusServer(config) as prom:      # started on enter, stopped (dir removed) on exit
        prom.wait_for_targets_up("pcm-selector")
        prom.query('up{job="pcm-selector"}')    # -> the result vector of /api/v1/query

The configuration is YAML text, or a callable taking the port Prometheus will listen on (so a
self-scrape job can name it; the port is only known once picked). A missing `prometheus` binary
raises PrometheusNotInstalled, whose message names the Debian package: tests turn it into a
failure, never a skip.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.redis_server import free_port

HOST = "127.0.0.1"
INSTALL_HINT = (
    "prometheus not found on PATH: install Debian's `prometheus` package "
    "(apt-get install -y prometheus, which also ships promtool); the project's "
    "test command installs it"
)

Config = str | Callable[[int], str]


class PrometheusNotInstalled(RuntimeError):
    pass


def find_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise PrometheusNotInstalled(INSTALL_HINT)
    return path


class PrometheusError(RuntimeError):
    """The HTTP API answered an error (bad query, ...)."""


class PrometheusServer:
    """One Prometheus process on 127.0.0.1 with its TSDB in a temp dir."""

    def __init__(
        self,
        config: Config,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        executable: str | None = None,
        log_level: str = "warn",
    ) -> None:
        self.executable = executable or find_prometheus()
        self._config = config
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        self.dir = Path(
            tempfile.mkdtemp(prefix="pcm-prometheus-") if data_dir is None else data_dir
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None

    # -- paths and urls -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def tsdb_path(self) -> Path:
        return self.dir / "tsdb"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def config_text(self) -> str:
        return self._config(self.port) if callable(self._config) else self._config

    # -- lifecycle ----------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self.is_running():
            return self
        for attempt in range(5):
            try:
                self._launch(timeout)
                return self
            except OSError:
                # The port was taken between free_port() and the bind: pick another (and
                # rebuild the config, which may name it) unless the port was fixed.
                if self._fixed_port or attempt == 4:
                    raise
                self.port = free_port()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Prometheus shuts down cleanly), SIGKILL after `timeout`."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def close(self) -> None:
        """Stop, and remove the temp dir if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def command(self) -> list[str]:
        return [
            self.executable,
            f"--config.file={self.config_path}",
            f"--web.listen-address={HOST}:{self.port}",
            f"--storage.tsdb.path={self.tsdb_path}",
            f"--log.level={self.log_level}",
        ]

    def _launch(self, timeout: float) -> None:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    log_text = self.log_tail()
                    if "address already in use" in log_text:
                        raise OSError(f"port {self.port} is taken:\n{log_text}")
                    raise RuntimeError(
                        f"prometheus exited with {proc.returncode} on port {self.port}:\n{log_text}"
                    )
                try:
                    if http.get("/-/ready").status_code == 200:
                        self._proc = proc
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"prometheus on port {self.port} was not ready within {timeout} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP API -----------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/PATH; the `data` of a successful answer, PrometheusError otherwise."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=10.0)
        response = self._http.get(f"/api/v1/{path}", params=params)
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"/api/v1/{path} {params}: HTTP {response.status_code}: {response.text[:500]}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusError(
                f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result list of a vector (each {"metric": {...}, "value": [t, v]}),
        or a one-element list for a scalar."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r}: expected an instant vector, got {data['resultType']}")
        return list(data["result"])

    def values(self, expr: str) -> list[float]:
        """The sample values of an instant query (NaN included)."""
        return [float(item["value"][1]) for item in self.query(expr)]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every loaded group (alerting and recording)."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def wait_for_targets_up(self, job: str, timeout: float = 30.0) -> None:
        """Until every target of `job` was scraped successfully."""

        def all_up() -> bool:
            targets = [t for t in self.targets() if t["labels"].get("job") == job]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        self.wait_until(all_up, timeout, f"targets of job {job!r} up")

    def wait_for_scrapes(self, job: str, count: int, timeout: float = 30.0) -> None:
        """Until `count` more scrapes of every target of `job` happened (from now)."""

        def scrape_times() -> dict[str, str]:
            return {
                t["scrapeUrl"]: t["lastScrape"]
                for t in self.targets()
                if t["labels"].get("job") == job
            }

        seen = {url: {last} for url, last in scrape_times().items()}

        def done() -> bool:
            for url, last in scrape_times().items():
                seen.setdefault(url, set()).add(last)
            return bool(seen) and all(len(s) > count for s in seen.values())

        self.wait_until(done, timeout, f"{count} scrapes of job {job!r}", interval=0.1)

    def wait_until(
        self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(
                    f"prometheus exited while waiting for {what}:\n{self.log_tail()}"
                )
            if predicate():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: no {what} within {timeout} s")
            time.sleep(interval)
