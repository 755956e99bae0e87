"""The ChunkSelector servicer: decode, call the application layer in a thread, encode.

Every blocking step (conversion of a large batch, the selection, the store) runs in the event
loop's default executor, so one slow call never stalls the loop that also serves HTTP. The one
exception: a Select of at most `inline_chunks` chunks runs on the event loop itself while the
store answers (a small select costs less than handing it to a thread and back); after a failed
store call, selects go to a thread until the store answers again, so a slow or lost store
never stalls the loop for more than one call's socket timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc

from pcm_contract import codec
from pcm_contract.errors import Conflict, InvalidArgument, NotFound, PCMError, clip_message
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.gen.pcm.v1 import selector_pb2_grpc as pb_grpc
from selector_service.metrics import Metrics
from selector_service.select_threads import in_thread, select_executor
from selector_service.service import SelectorService

log = logging.getLogger(__name__)

ERROR_FIELD_KEY = "pcm-error-field"  # trailing metadata naming the bad field of INVALID_ARGUMENT
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ChunkSelectorServicer(pb_grpc.ChunkSelectorServicer):
    def __init__(self, service: SelectorService, metrics: Metrics | None = None,
                 inline_chunks: int = 0, select_threads: int | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.inline_chunks = inline_chunks
        # Selects compute in a pool of their own (select_threads.py); None: the default one
        self.select_executor = (None if select_threads is None
                                else select_executor(select_threads))

    async def PutRun(self, request: pb.PutRunRequest,
                     context: grpc.aio.ServicerContext) -> pb.RunInfo:
        return await _call(context, self._put_run, request)

    async def GetRun(self, request: pb.GetRunRequest,
                     context: grpc.aio.ServicerContext) -> pb.RunInfo:
        return await _call(context, self._get_run, request)

    async def DeleteRun(self, request: pb.DeleteRunRequest,
                        context: grpc.aio.ServicerContext) -> pb.DeleteRunResponse:
        return await _call(context, self._delete_run, request)

    async def SelectChunks(self, request: pb.SelectChunksRequest,
                           context: grpc.aio.ServicerContext) -> pb.SelectChunksResponse:
        inline = len(request.phase_ids) <= self.inline_chunks and self.service.store_ok
        return await _call(context, self._select, request, inline=inline,
                           executor=self.select_executor)

    async def ReportOutcomes(self, request: pb.ReportOutcomesRequest,
                             context: grpc.aio.ServicerContext) -> pb.ReportOutcomesResponse:
        try:
            return await asyncio.to_thread(self._report, request)
        except (InvalidArgument, NotFound, Conflict) as exc:
            if self.metrics is not None:
                self.metrics.on_report_rejected(request.run_id)
            await abort(context, exc)
        except Exception as exc:
            await abort(context, exc)

    # -- blocking parts (run in a worker thread) ----------------------------------------------

    def _put_run(self, request: pb.PutRunRequest) -> pb.RunInfo:
        info = self.service.put_run(request.run_id, codec.run_config_changes(request.config))
        return codec.run_info_to_proto(info)

    def _get_run(self, request: pb.GetRunRequest) -> pb.RunInfo:
        return codec.run_info_to_proto(self.service.get_run(request.run_id))

    def _delete_run(self, request: pb.DeleteRunRequest) -> pb.DeleteRunResponse:
        return pb.DeleteRunResponse(deleted=self.service.delete_run(request.run_id).deleted)

    def _select(self, request: pb.SelectChunksRequest) -> pb.SelectChunksResponse:
        flat = codec.select_flat_from_proto(request)
        log.debug("select run=%s request_id=%s trajectories=%d", request.run_id,
                  flat.request_id, len(flat.task_ids))
        answer = self.service.select_flat(request.run_id, flat)
        return codec.select_response_to_proto(answer)

    def _report(self, request: pb.ReportOutcomesRequest) -> pb.ReportOutcomesResponse:
        ack = self.service.report_outcomes(request.run_id,
                                           codec.outcome_report_from_proto(request))
        return pb.ReportOutcomesResponse(accepted=ack.accepted, store_epoch=ack.store_epoch)


async def _call(context: grpc.aio.ServicerContext, fn: Callable[[Req], Resp],
                request: Req, inline: bool = False,
                executor: ThreadPoolExecutor | None = None) -> Resp:
    """`fn(request)` in a thread of `executor` (the default executor for None; on the event
    loop itself when `inline`), its error turned into the call's gRPC status."""
    try:
        return fn(request) if inline else await in_thread(executor, fn, request)
    except Exception as exc:
        await abort(context, exc)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the gRPC status of a project error (INTERNAL for anything else).
    Details are cut short, and the field goes in trailing metadata as printable ASCII, so an
    error never overflows the metadata limit whatever the input."""
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, PCMError):
        code = grpc.StatusCode[exc.grpc_code]
        details = clip_message(str(exc))
        if exc.field:
            trailing = ((ERROR_FIELD_KEY, _metadata_value(exc.field)),)
    else:
        log.exception("internal error", exc_info=exc)
        code, details = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
    await context.abort(code, details, trailing_metadata=trailing)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _metadata_value(text: str, limit: int = 128) -> str:
    """Printable ASCII only (gRPC rejects other bytes in a text metadata value), cut short."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def status_name(context: Any) -> str:
    """The status name of a finished (or aborted) call, for metrics."""
    try:
        code = context.code()
    except Exception:  # pragma: no cover - older grpc without ServicerContext.code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return str(member.name)
    return "INTERNAL"
