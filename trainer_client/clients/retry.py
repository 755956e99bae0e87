"""When a remote call is retried, and how: exponential backoff with jitter (tenacity).

A call is retried only where resending is safe: the selector or its store is unavailable (gRPC
UNAVAILABLE, HTTP 503) or the connection failed. Select and report are idempotent on
request_id, so resending after a lost reply counts nothing twice. Bad input, unknown runs,
conflicts and auth failures are never retried; a call that timed out is not retried either (the
timeout bounds the call; the local fallback still applies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from pcm_contract.errors import StoreUnavailable
from trainer_client.clients.errors import SelectorTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """Unavailable or unreachable, and not a timeout."""
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, SelectorTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4
    """attempts after the first, for retryable failures only"""
    backoff_s: float = 0.1
    """the first wait; it doubles each retry, plus a random 0..backoff_s of jitter"""
    max_backoff_s: float = 2.0
    """the longest wait between two attempts (before jitter)"""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, retried as the policy says; the last failure is raised as is."""
        return Retrying(**self._tenacity_args)(fn, *args)

    @cached_property
    def _tenacity_args(self) -> dict[str, Any]:
        return dict(
            stop=stop_after_attempt(self.retries + 1),
            wait=(wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
                  + wait_random(0, self.backoff_s)),
            retry=retry_if_exception(retryable),
            reraise=True,
            before_sleep=_log_retry,
        )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.info("selector call failed (%s); retry %d", exc, state.attempt_number)
