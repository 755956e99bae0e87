"""The HTTP client (`http://HOST:PORT`, `https://...`): RemoteClient's five hooks over one
pooled httpx.Client. Thin: retries, the replay log and the local fallback are remote.py's.

A Select travels as the gRPC API's protobuf messages (Content-Type and Accept
application/x-protobuf, docs/design.md "HTTP routes"): the features as packed float32 bytes
and the masks and weights of the answer as packed bytes, built and read by `pcm_contract.codec`
as the gRPC client does, so a batch is the same float32 values over either transport. The
other bodies are the models' JSON (docs/design.md, "Bodies"); errors are JSON whatever was sent.

`select_body` is a Select's JSON form (for a client without protobuf), serialised with orjson
straight from the NumPy arrays; float32 features are written in their shortest float32 form,
which the server reads back as the same float32 values.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import orjson

from pcm_contract import codec, models
from pcm_contract.errors import PCMError
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from trainer_client.clients.errors import (
    BY_HTTP_STATUS,
    SelectorTimeout,
    SelectorUnreachable,
    error_from_answer,
)
from trainer_client.clients.grpc_transport import select_message
from trainer_client.clients.remote import RemoteClient

JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
PROTOBUF = "application/x-protobuf"
PROTOBUF_HEADERS = {"content-type": PROTOBUF, "accept": PROTOBUF}


def select_body(request: models.SelectRequest) -> bytes:
    """The JSON form of a Select body (HttpClient sends `select_message_body`)."""
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


def select_message_body(run_id: str, request: models.SelectRequest) -> bytes:
    """The protobuf form of a Select body (`pcm.v1.SelectChunksRequest`)."""
    return select_message(run_id, request).SerializeToString()


def loads(content: bytes) -> Any:
    return orjson.loads(content)


def select_answer(content: bytes) -> models.SelectResponse:
    """A JSON Select answer."""
    answer = models.SelectResponse.model_validate(loads(content))
    for arr in (*answer.masks, *answer.weights):  # read-only, as the other transports answer
        arr.flags.writeable = False
    return answer


def select_answer_message(content: bytes) -> models.SelectResponse:
    """A protobuf Select answer (`pcm.v1.SelectChunksResponse`; its arrays read-only)."""
    return codec.select_response_from_proto(pb.SelectChunksResponse.FromString(content))


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
    field = body.get("field")
    status = response.status_code
    return error_from_answer(BY_HTTP_STATUS.get(status), detail, str(field) if field else None,
                             f"HTTP {status}")


def error_from_transport(exc: httpx.TransportError, url: str) -> PCMError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return SelectorTimeout(f"no answer from the selector at {url} in time ({exc!r})")
    return SelectorUnreachable(f"cannot reach the selector at {url}: {exc!r}")


def _path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{run_id}{suffix}"


class HttpClient(RemoteClient):
    """`http://HOST:PORT`. Thread-safe (one pooled httpx.Client)."""

    def __init__(self, url: str, *, token: str | None = None, max_connections: int = 16,
                 **options: Any) -> None:
        """token: the bearer token the selector asks for; max_connections: the pool's size;
        options: RemoteClient's (timeout_s, retries, fallback, queue_path, ...)."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP selector url: {url!r} (expected http://HOST:PORT)")
        super().__init__(url, **options)
        headers = dict(JSON_HEADERS)
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))

    def _send(self, method: str, path: str, content: bytes | None = None,
              headers: dict[str, str] | None = None) -> bytes:
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from None
        if response.is_error:
            raise error_from_response(response)
        return response.content

    def _put_run(self, run_id: str, changes: dict[str, Any]) -> models.RunInfo:
        content = self._send("PUT", _path(run_id), json.dumps(changes).encode())
        return models.RunInfo.model_validate(loads(content))

    def _get_run(self, run_id: str) -> models.RunInfo:
        return models.RunInfo.model_validate(loads(self._send("GET", _path(run_id))))

    def _delete_run(self, run_id: str) -> models.DeleteAck:
        return models.DeleteAck.model_validate(loads(self._send("DELETE", _path(run_id))))

    def _select(self, run_id: str, request: models.SelectRequest) -> models.SelectResponse:
        content = self._send("POST", _path(run_id, "/select"),
                             select_message_body(run_id, request), PROTOBUF_HEADERS)
        return select_answer_message(content)

    def _report(self, run_id: str, report: models.OutcomeReport) -> models.OutcomeAck:
        content = self._send("POST", _path(run_id, "/outcomes"),
                             report.model_dump_json().encode())
        return models.OutcomeAck.model_validate(loads(content))

    def close(self) -> None:
        self._http.close()
