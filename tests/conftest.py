"""Root test fixtures: a real redis-server for the whole session (tests/redis_server.py).

- ``redis_server`` (session): one RedisServer, no persistence; started on first use.
- ``redis_url`` (function): a URL to an empty database of that server (``redis://HOST:PORT/DB``,
  DB cycling over 1..15, flushed before the test). Use this for anything that just needs Redis.
- ``isolated_redis_server`` (function): a private RedisServer with AOF persistence in the test's
  tmp dir, for tests that stop, restart or break Redis. Stopped at teardown.
- ``redis_cluster`` (session): a 3-master Redis Cluster (tests/redis_cluster.py), started on
  first use; ``redis_cluster_url`` (function): its ``redis+cluster://`` URL, every master
  flushed before the test. Tests that kill nodes start a cluster of their own.

A missing ``redis-server`` binary fails the test with the install hint; it is never skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer, RedisServerNotInstalled

_databases = itertools.cycle(range(1, 16))


def _new_server(**kwargs: object) -> RedisServer:
    try:
        return RedisServer(**kwargs).start()  # type: ignore[arg-type]
    except RedisServerNotInstalled as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _new_server()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.is_running():  # a test stopped the shared server: bring it back
        redis_server.start()
    url = redis_server.url_for(next(_databases))
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def isolated_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = _new_server(data_dir=tmp_path / "redis", appendonly=True)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    try:
        cluster = RedisClusterServers(masters=3)
    except RedisServerNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    for node in redis_cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port) as client:
            client.flushall()
    return redis_cluster.url
