"""The threads Selects compute in: a small pool of their own (Settings.select_threads).

A selection is CPU-bound Python and NumPy under the GIL, with one store round trip in the
middle. Run in many threads at once (the event loop's default executor), concurrent Selects
spend CPU handing the GIL back and forth (NumPy releases it around each call) without finishing
sooner: with one thread a select costs the least CPU (the event loop does the I/O meanwhile);
a second overlaps one Select's round trip with another's computation, which pays where the
round trip is long.
Other blocking calls (runs, outcome reports, readiness) keep the default executor, so a burst
of Selects does not delay them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")


def select_executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="pcm-select")


async def in_thread(executor: ThreadPoolExecutor | None, fn: Callable[..., R], *args: object) -> R:
    """`fn(*args)` in one of `executor`'s threads (the loop's default executor for None), with
    the caller's context variables, as `asyncio.to_thread` does."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await loop.run_in_executor(executor, call)
