"""Proto fuzz over gRPC: hypothesis generates pcm.v1 messages (every
field from its descriptor, with boundary values, and mutations of a valid batch) and random
bytes, sent to every ChunkSelector method of a real server. Every call ends OK,
INVALID_ARGUMENT or NOT_FOUND; no rejected call changes the sentinel run's state.

Bounded: `MAX_EXAMPLES` examples per test (a few seconds each).
    python -m pytest tests/hardening/test_fuzz_grpc.py -q
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from tests.fixtures.servers import ServerThread
from tests.hardening.conftest import serving
from tests.selector_service.conftest import (
    GRPC_OPTIONS,
    TOKEN,
    batch,
    to_proto,
)

MAX_EXAMPLES = 150
SENTINEL = "sentinel-g"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
METHODS: dict[str, Any] = {"PutRun": pb.PutRunRequest, "GetRun": pb.GetRunRequest,
           "DeleteRun": pb.DeleteRunRequest, "SelectChunks": pb.SelectChunksRequest,
           "ReportOutcomes": pb.ReportOutcomesRequest}
_unique = itertools.count()

# -- strategies -----------------------------------------------------------------------------------

_INT32 = st.one_of(st.integers(-3, 70), st.sampled_from([-(2**31), 2**31 - 1, 4096, 4097]))
_INT64 = st.one_of(st.integers(-3, 70), st.sampled_from([-(2**63), 2**63 - 1, 2**53 + 1]))
_DOUBLE = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 0.2, 1.0, 1.5, -1.0, math.nan, math.inf]))
_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "pick", "g0", "x" * 300, "a\n"]))
_RUN_IDS = st.one_of(st.just(SENTINEL), st.sampled_from(["", "nope", "a\n", "é", "-x"]),
                     st.text(max_size=10))
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: _INT32, FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_DOUBLE: _DOUBLE, FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: _TEXT, FieldDescriptor.TYPE_BYTES: st.binary(max_size=96),
}


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """Field values of a message of `descriptor`: each field set or not, any value."""
    out: dict[str, Any] = {}
    for f in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            if f.name == "tasks":
                continue  # RunInfo only: never sent
            out[f.name] = {}
        elif f.message_type is not None:
            if depth < 2:
                out[f.name] = draw(messages(f.message_type, depth + 1))
        elif f.is_repeated:
            out[f.name] = draw(st.lists(_SCALARS[f.type], max_size=8))
        elif f.name == "run_id":
            out[f.name] = draw(_RUN_IDS)
        else:
            out[f.name] = draw(_SCALARS[f.type])
    return out


def _build(cls: type[Message], fields: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in fields.items():
        target = getattr(msg, name)
        if isinstance(value, dict):
            sub = _build(type(target), value) if not hasattr(target, "keys") else None
            if sub is not None:
                target.CopyFrom(sub)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(msg, name, value)
    return msg


@st.composite
def near_valid_selects(draw: st.DrawFn) -> pb.SelectChunksRequest:
    """A valid batch for the sentinel run with a few fields replaced by fuzzed values."""
    msg = to_proto(SENTINEL, batch("seed", n=draw(st.integers(1, 8)), c=draw(st.integers(1, 6)),
                                   seed=draw(st.integers(0, 3))))
    overrides = draw(messages(pb.SelectChunksRequest.DESCRIPTOR))
    keep = draw(st.sets(st.sampled_from(sorted(overrides)), max_size=2)) if overrides else set()
    for name in keep:
        msg.ClearField(name)
    fuzzed = _build(pb.SelectChunksRequest, {k: overrides[k] for k in keep})
    msg.MergeFrom(fuzzed)
    return msg


# -- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def selector() -> Iterator[tuple[ServerThread, grpc.Channel]]:
    with serving(max_tasks_per_run=4, max_runs=4) as srv, \
            grpc.insecure_channel(srv.grpc_target, options=GRPC_OPTIONS) as channel:
        yield srv, channel


def _make_sentinel(channel: grpc.Channel) -> None:
    stub = pb_grpc.ChunkSelectorStub(channel)
    stub.PutRun(pb.PutRunRequest(run_id=SENTINEL, config=pb.RunConfig(feature_dim=4)),
                metadata=METADATA)
    stub.SelectChunks(to_proto(SENTINEL, batch(f"sentinel-{next(_unique)}")),
                      metadata=METADATA)


def _sentinel(channel: grpc.Channel) -> Any:
    stub = pb_grpc.ChunkSelectorStub(channel)
    try:
        info = stub.GetRun(pb.GetRunRequest(run_id=SENTINEL), metadata=METADATA, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    info.ClearField("store_epoch")
    return info.SerializeToString(deterministic=True)


def _call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(f"/pcm.v1.ChunkSelector/{method}")
    try:
        call(payload, metadata=METADATA, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _unique_request_id(msg: Any) -> None:
    """Fuzzed request_ids get a unique suffix: a reused id with another body is a (correct)
    ALREADY_EXISTS, which is not what this fuzz looks for."""
    if "request_id" in msg.DESCRIPTOR.fields_by_name and msg.request_id:
        msg.request_id += f".{next(_unique)}"


def _check(channel: grpc.Channel, method: str, payload: bytes) -> None:
    before = _sentinel(channel)
    if before is None:  # a fuzzed DeleteRun (accepted) removed it
        _make_sentinel(channel)
        before = _sentinel(channel)
    code = _call(channel, method, payload)
    assert code in ALLOWED, (method, code, payload[:200])
    if code != grpc.StatusCode.OK:
        assert _sentinel(channel) == before, (method, code)


# -- the fuzz -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.data())
def test_fuzzed_messages_get_ok_invalid_argument_or_not_found(
        selector: tuple[ServerThread, grpc.Channel], data: st.DataObject) -> None:
    _, channel = selector
    method = data.draw(st.sampled_from(sorted(METHODS)))
    msg = _build(METHODS[method], data.draw(messages(METHODS[method].DESCRIPTOR)))
    _unique_request_id(msg)
    _check(channel, method, msg.SerializeToString())


@FUZZ
@given(msg=near_valid_selects())
def test_mutated_batches_get_ok_invalid_argument_or_not_found(
        selector: tuple[ServerThread, grpc.Channel], msg: pb.SelectChunksRequest) -> None:
    _, channel = selector
    _unique_request_id(msg)
    _check(channel, "SelectChunks", msg.SerializeToString())


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), payload=st.binary(max_size=256))
def test_random_bytes_get_ok_invalid_argument_or_not_found(
        selector: tuple[ServerThread, grpc.Channel], method: str, payload: bytes) -> None:
    _, channel = selector
    _check(channel, method, payload)
