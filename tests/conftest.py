"""Root test fixtures: the real servers (redis-server, a Redis Cluster, `pcm-selector serve`,
Prometheus) come from tests/fixtures/servers.py, which documents each fixture; the tiny SFT
checkpoint and training configurations of the trainer's and the benchmarks' tests from
tests/fixtures/training.py."""

pytest_plugins = ("tests.fixtures.servers", "tests.fixtures.training")
