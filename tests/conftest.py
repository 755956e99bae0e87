"""Root test fixtures: the real servers (redis-server, a Redis Cluster, `pcm-selector serve`,
Prometheus) come from tests/fixtures/servers.py, which documents each fixture."""

pytest_plugins = ("tests.fixtures.servers",)
