"""The HTTP clients (`http://HOST:PORT`, `https://...`): `HttpClient` and `AsyncHttpClient`
over httpx connection pools. Thin: bodies are the models' JSON (docs/design.md, "Bodies");
retries and the local fallback are `trainer_client.clients.fallback`'s.

A Select body is serialised with orjson straight from the NumPy arrays (measured on a full
LIBERO step, 1.8 M features: ~80 ms, against ~150 ms for pydantic's serialiser and ~950 ms for
json over lists). float32 features are written in their shortest float32 form, which the server
parses and casts back to the same float32 values the core computes on (as gRPC sends them).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import numpy as np
import orjson

from pcm_contract.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PCMError,
    StoreUnavailable,
    Unauthenticated,
)
from pcm_contract.models import (
    DeleteAck,
    OutcomeAck,
    OutcomeReport,
    RunInfo,
    SelectRequest,
    SelectResponse,
)
from trainer_client.clients.fallback import (
    DURABLE_AFTER_S,
    AsyncRemoteClient,
    RemoteClient,
    SelectorTimeout,
    SelectorUnreachable,
)

JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


def select_body(request: SelectRequest) -> bytes:
    body: dict[str, Any] = {
        "request_id": request.request_id, "trainer_id": request.trainer_id,
        "step": request.step,
        "trajectories": [
            {"task_id": t.task_id, "group_id": t.group_id, "success": t.success,
             "phase_ids": np.ascontiguousarray(t.phase_ids, dtype=np.int64),
             "action_features": np.ascontiguousarray(t.action_features)}
            for t in request.trajectories],
    }
    if request.keep_fraction is not None:
        body["keep_fraction"] = request.keep_fraction
    if request.trained_masks is not None and request.trained_weights is not None:
        body["trained_masks"] = [np.ascontiguousarray(m, dtype=bool)
                                 for m in request.trained_masks]
        body["trained_weights"] = [np.ascontiguousarray(w, dtype=np.float64)
                                   for w in request.trained_weights]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(content: bytes) -> Any:
    return orjson.loads(content)


def select_answer(content: bytes) -> SelectResponse:
    answer = SelectResponse.model_validate(loads(content))
    for arr in (*answer.masks, *answer.weights):  # read-only, as the other transports answer
        arr.flags.writeable = False
    return answer


def error_from_response(response: httpx.Response) -> PCMError:
    """The project exception for an error answer (`{"detail", "code", "field"}`)."""
    try:
        body = loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text or response.reason_phrase}
    detail = body.get("detail")
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    status = response.status_code
    field = body.get("field")
    if status in (400, 413, 422):
        field = field or detail.partition(":")[0] or "body"
        return InvalidArgument(str(field), detail.removeprefix(f"{field}: "))
    if status == 409:
        field = field or "request_id"
        return Conflict(str(field), detail.removeprefix(f"{field}: "))
    if status == 404:
        return NotFound(detail, field=str(field or "run_id"))
    if status == 401:
        return Unauthenticated(detail)
    if status == 503:
        return StoreUnavailable(detail)
    if status == 408:  # the server did not get the whole body in time
        return SelectorTimeout(detail)
    return PCMError(f"HTTP {status}: {detail}")


def error_from_transport(exc: httpx.TransportError, url: str) -> PCMError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return SelectorTimeout(f"no answer from the selector at {url} in time ({exc!r})")
    return SelectorUnreachable(f"cannot reach the selector at {url}: {exc!r}")


class _HttpOptions:
    def _client_args(self, url: str, token: str | None, timeout_s: float,
                     max_connections: int) -> dict[str, Any]:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP selector url: {url!r} (expected http://HOST:PORT)")
        headers = dict(JSON_HEADERS)
        if token:
            headers["authorization"] = f"Bearer {token}"
        return dict(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                    limits=httpx.Limits(max_connections=max_connections,
                                        max_keepalive_connections=max_connections))


def _path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{run_id}{suffix}"


class HttpClient(_HttpOptions, RemoteClient):
    """`http://HOST:PORT`. Thread-safe (one pooled httpx.Client)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 retries: int = 4, backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 fallback: bool = False, queue_path: str | os.PathLike[str] | None = None,
                 max_connections: int = 16, durable_after_s: float = DURABLE_AFTER_S) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s, fallback=fallback, queue_path=queue_path,
                         durable_after_s=durable_after_s)
        self._http = httpx.Client(**self._client_args(url, token, timeout_s, max_connections))

    def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        try:
            response = self._http.request(method, path, content=content)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from None
        if response.is_error:
            raise error_from_response(response)
        return response.content

    def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        content = self._send("PUT", _path(run_id), json.dumps(changes).encode())
        return RunInfo.model_validate(loads(content))

    def _get_run(self, run_id: str) -> RunInfo:
        return RunInfo.model_validate(loads(self._send("GET", _path(run_id))))

    def _delete_run(self, run_id: str) -> DeleteAck:
        return DeleteAck.model_validate(loads(self._send("DELETE", _path(run_id))))

    def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        return select_answer(self._send("POST", _path(run_id, "/select"), select_body(request)))

    def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        content = self._send("POST", _path(run_id, "/outcomes"),
                             report.model_dump_json().encode())
        return OutcomeAck.model_validate(loads(content))

    def close(self) -> None:
        self._http.close()


class AsyncHttpClient(_HttpOptions, AsyncRemoteClient):
    """`http://HOST:PORT` over one pooled httpx.AsyncClient."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 retries: int = 4, backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 fallback: bool = False, queue_path: str | os.PathLike[str] | None = None,
                 max_connections: int = 16, durable_after_s: float = DURABLE_AFTER_S) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s, fallback=fallback, queue_path=queue_path,
                         durable_after_s=durable_after_s)
        self._http = httpx.AsyncClient(**self._client_args(url, token, timeout_s,
                                                           max_connections))

    async def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        try:
            response = await self._http.request(method, path, content=content)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from None
        if response.is_error:
            raise error_from_response(response)
        return response.content

    async def _put_run(self, run_id: str, changes: dict[str, Any]) -> RunInfo:
        content = await self._send("PUT", _path(run_id), json.dumps(changes).encode())
        return RunInfo.model_validate(loads(content))

    async def _get_run(self, run_id: str) -> RunInfo:
        return RunInfo.model_validate(loads(await self._send("GET", _path(run_id))))

    async def _delete_run(self, run_id: str) -> DeleteAck:
        return DeleteAck.model_validate(loads(await self._send("DELETE", _path(run_id))))

    async def _select(self, run_id: str, request: SelectRequest) -> SelectResponse:
        return select_answer(await self._send("POST", _path(run_id, "/select"),
                                              select_body(request)))

    async def _report(self, run_id: str, report: OutcomeReport) -> OutcomeAck:
        content = await self._send("POST", _path(run_id, "/outcomes"),
                                   report.model_dump_json().encode())
        return OutcomeAck.model_validate(loads(content))

    async def close(self) -> None:
        await self._http.aclose()
