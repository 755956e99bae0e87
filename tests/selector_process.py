"""Start `pcm-selector serve` as a subprocess for tests: free 127.0.0.1 ports, given env, wait
for /readyz, grpc/http urls, SIGTERM (`stop`) or SIGKILL (`kill`), restart on the same ports.

    with SelectorProcess(store="redis", redis_url=redis_url) as selector:
        client = connect(selector.grpc_url)   # or selector.http_url
        selector.kill()
        selector.start()                      # new process, same ports and env

The implementation lives in trainer_client/bench/processes.py (the benchmark launches the same
processes and must not import from tests/).
"""

from __future__ import annotations

from trainer_client.bench.processes import HOST, SelectorProcess, free_port

__all__ = ["HOST", "SelectorProcess", "free_port"]
