"""Selects compute in a pool of their own (`PCM_SELECT_THREADS`), over both transports; other
calls keep the default executor."""

from __future__ import annotations

import threading
from typing import Any

from selector_service.settings import Settings
from tests.fixtures.servers import ServerThread
from tests.selector_service.conftest import batch
from trainer_client import connect


def test_selects_run_in_the_select_threads_and_other_calls_do_not() -> None:
    # gRPC selects in a thread too (not on the event loop, as small ones are by default)
    server = ServerThread(Settings(grpc_port=0, http_port=0, select_threads=1,
                                   grpc_inline_select_chunks=0)).start()
    names: dict[str, set[str]] = {"select": set(), "put_run": set()}
    service = server.service
    select_flat, put_run = service.select_flat, service.put_run

    def record(kind: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            names[kind].add(threading.current_thread().name)
            return fn(*args, **kwargs)
        return call

    service.select_flat = record("select", select_flat)  # type: ignore[method-assign]
    service.put_run = record("put_run", put_run)  # type: ignore[method-assign]
    try:
        for url in (f"grpc://{server.grpc_target}", server.http_url):
            with connect(url) as client:
                client.put_run("threads", feature_dim=4)
                for k in range(3):
                    answer = client.select("threads", batch(f"{url[:4]}-{k}"))
                    assert answer.total_chunks == 16 * 8
        assert len(names["select"]) == 1  # one select thread served both transports
        assert all(n.startswith("pcm-select") for n in names["select"]), names
        assert not any(n.startswith("pcm-select") for n in names["put_run"]), names
    finally:
        server.stop()
