"""Start a real Redis Cluster for tests: N masters (no replicas), each a ``redis-server`` in
cluster mode on a free 127.0.0.1 port, joined with ``redis-cli --cluster create``.

    from tests.redis_cluster import RedisClusterServers

    with RedisClusterServers(masters=3) as cluster:    # started on enter, stopped on exit
        store = RedisStore(cluster.url)                # redis+cluster://127.0.0.1:P1,...
        node = cluster.node_for_key("pcm:{run-1}:config")
        node.kill()                                    # SIGKILL that master

The nodes run with ``cluster-require-full-coverage no``, so that the other masters keep serving
their slots while one is down (what the selector's documentation tells operators to set), and a
short ``cluster-node-timeout``. Waiting is bounded: every node must report ``cluster_state:ok``
within ``timeout`` seconds of the create. A missing ``redis-server`` or ``redis-cli`` raises
RedisServerNotInstalled (scripts/test.sh installs both).
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.crc import key_slot

from tests.redis_server import RedisServer, RedisServerNotInstalled

CLI_HINT = ("redis-cli not found on PATH: install Debian's `redis-tools` package (apt-get "
            "install -y redis-tools); the project's test command installs it")


BUS_OFFSET = 10000  # a cluster node also listens on its port + 10000 (the cluster bus)


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A port whose cluster bus port (+10000) is free too; at most 55535 (Redis' limit), and
    below the usual ephemeral range (32768-60999) so outgoing connections rarely take it."""
    for _ in range(1000):
        port = random.randint(12000, 22767)
        if _is_free(port) and _is_free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class ClusterNode(RedisServer):
    """One redis-server with `cluster-enabled yes`; `kill()` is a SIGKILL."""

    def __init__(self, data_dir: Path, *, node_timeout_ms: int) -> None:
        super().__init__(port=free_cluster_port(), data_dir=data_dir)
        self.node_timeout_ms = node_timeout_ms
        self._started_once = False

    def start(self, timeout: float = 10.0) -> ClusterNode:
        """Start; the first start moves to other ports if these were taken meanwhile."""
        if self.is_running():
            return self
        for attempt in range(5):
            try:
                self._launch(timeout)
                self._started_once = True
                return self
            except OSError:
                if self._started_once or attempt == 4:
                    raise
                self.port = free_cluster_port()
        return self

    def _command(self) -> list[str]:
        return [*super()._command(),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", "no"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout)


def cluster_state(port: int) -> str:
    """`cluster_state` from CLUSTER INFO of the node on `port` ("" if it does not answer)."""
    try:
        with _client(port) as client:
            info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return ""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


class RedisClusterServers:
    """`masters` cluster-mode redis-servers joined into one cluster covering all 16384 slots."""

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 1000,
                 cli: str | None = None) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        found = cli or shutil.which("redis-cli")
        if found is None:
            raise RedisServerNotInstalled(CLI_HINT)
        self.cli = found
        self.dir = Path(tempfile.mkdtemp(prefix="pcm-redis-cluster-"))
        self.nodes = [ClusterNode(self.dir / f"node{i}", node_timeout_ms=node_timeout_ms)
                      for i in range(masters)]

    @property
    def url(self) -> str:
        """The selector's PCM_REDIS_URL for this cluster: every node as a startup node."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [self.cli, "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({out.returncode}):\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        self.wait_state("ok", timeout)
        return self

    def wait_state(self, state: str, timeout: float = 30.0,
                   nodes: list[ClusterNode] | None = None) -> None:
        """Until every (running) node of `nodes` reports cluster_state:`state`."""
        nodes = [n for n in (nodes or self.nodes) if n.is_running()]
        deadline = time.monotonic() + timeout
        while True:
            states = {n.port: cluster_state(n.port) for n in nodes}
            if all(s == state for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not {state} within {timeout} s: {states}")
            time.sleep(0.05)

    def slot_owner(self, slot: int) -> ClusterNode:
        """The master that serves `slot` (from CLUSTER SLOTS of a running node)."""
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                with _client(node.port) as client:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            # [[start, end, [host, port, id, ...], replicas...], ...] (raw or parsed by redis-py)
            items = ranges.items() if isinstance(ranges, dict) else (
                ((r[0], r[1]), {"primary": (r[2][0], r[2][1])}) for r in ranges)
            for (start, end), entry in items:
                if int(start) <= slot <= int(end):
                    port = int(entry["primary"][1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no running node knows the owner of slot {slot}")

    def wait_marked_failed(self, dead: ClusterNode, timeout: float = 30.0) -> None:
        """Until every running node flags `dead` as `fail` in CLUSTER NODES (after about
        cluster-node-timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            views = []
            for node in self.nodes:
                if not node.is_running():
                    continue
                try:
                    with _client(node.port) as client:
                        text = client.execute_command("CLUSTER", "NODES")
                except redis.RedisError:
                    views.append(False)
                    continue
                text = text.decode() if isinstance(text, bytes) else str(text)
                line = next((x for x in text.splitlines() if f":{dead.port}@" in x), "")
                views.append("fail" in line.split()[2].split(",") if line else False)
            if views and all(views):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {dead.address} not marked failed within {timeout} s")
            time.sleep(0.05)

    def node_for_key(self, key: str) -> ClusterNode:
        return self.slot_owner(key_slot(key.encode()))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

