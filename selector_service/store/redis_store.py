"""Redis phase-state store: selectors are stateless over it (docs/design.md, "Redis
keys and Lua scripts" and "Scaling").

Same semantics as MemoryStore. Keys, all hash-tagged by run so that a run lives on one Redis
Cluster slot and every Lua script touches one slot:

- ``pcm:{RUN}:config``          hash: ``config`` (RunConfig JSON), ``state_version``,
                                ``outcome_reports``, ``revision`` (writes of task states)
- ``pcm:{RUN}:tasks``           set: the run's task ids (to find the state keys)
- ``pcm:{RUN}:state:TASK``      string: the binary TaskState (store/state_codec.py; JSON in
                                earlier versions, still read)
- ``pcm:{RUN}:req:REQUEST_ID``  string with TTL: the idempotency record, kind byte ``S`` + packed
                                SelectResponse (with the request digest), or ``R`` + the
                                digest of an outcome report
- ``pcm:{RUN}:reqs``            sorted set: request_id -> record expiry (ms), so that delete_run
                                finds every record without SCAN
- ``pcm:{RUN}:sels``            sorted set: selection_id -> expiry (ms), the selections the
                                run answered (outcome reports must name one)
- ``pcm:{RUN}:history``         stream, capped with ``XADD MAXLEN ~``; field ``e`` holds the
                                entry's JSON

Writes are Lua scripts (selector_service/store/lua.py). Reads of several keys use MULTI/EXEC,
so a snapshot's version and states agree. A select is one round trip: `snapshot_for_select`
answers from this process's copy of the run's state (what it last read, or the states its last
commit was answered with) and FOLD_SELECT folds the batch's update into the states as stored,
answering with the folded states, which join the copy; it refuses (and answers the current
state, which becomes the copy) only a copy beyond the staleness bound or of another config.
Only a select on tasks the copy lacks reads first.
Any Redis error (connection refused, timeout, READONLY, OOM, ...) becomes StoreUnavailable
naming the operation, after ``on_error(op)`` is called (the metrics hook); the client fails fast
(short socket timeouts, one immediate reconnect attempt, no backoff loops).

The store's ``epoch`` is the Redis server's ``run_id`` (``INFO server``), read on every new
connection: a restarted Redis gets a new one, and every pooled connection reconnects to it.

Redis Cluster: a URL ``redis+cluster://HOST:PORT,HOST:PORT,...`` (``rediss+cluster://`` for
TLS; ``USER:PASSWORD@`` before the first node; path empty or ``/0``) makes the store use
redis-py's ``RedisCluster``, with every listed node a startup node. The keys need nothing more:
every key of a run carries the hash tag ``{RUN}`` (run ids have no braces), so a run lives on one
slot, every script and MULTI touches one slot, and no key spans runs. The client connects on
first use (a cluster that is down at start-up makes calls fail, not the constructor) and retries
once, at once, after a connection error (with a fresh slot map, so a failover's new primary is
found). A call for a slot whose primary is down fails like any Redis error (StoreUnavailable:
gRPC UNAVAILABLE, HTTP 503) while runs on other slots keep working, provided the nodes run with
``cluster-require-full-coverage no``. The epoch in cluster mode is per run: the ``run_id`` of the
primary serving the run's slot (as of the calling thread's last call for the run), so a failover
or restart of one shard changes the epoch of that shard's runs only, and every selector reports
the same epoch for a run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from pcm_contract.errors import Conflict, InvalidArgument, NotFound, StoreUnavailable, clip
from pcm_contract.models import OutcomeReport, SelectResponse
from selector_service.core import RunConfig, TaskState
from selector_service.core.fold import StateUpdate
from selector_service.store import lua
from selector_service.store.base import (
    CommitResult,
    CommitStatus,
    FlatAnswer,
    RequestKind,
    RunSnapshot,
)
from selector_service.store.memory import check_digest, unknown_selection
from selector_service.store.state_codec import (
    decode_state,
    encode_counts,
    encode_fold_params,
    encode_update,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DELETE_ATTEMPTS = 32  # delete_run re-reads the run's task and request lists this many times
SELECT_CACHE_RUNS = 4096  # runs whose last read or committed state this process keeps
LOAD_ATTEMPTS = 32  # load(all tasks) re-reads the task list this many times

_SELECT = b"S"  # kind byte of a select record; a report record is b"R"
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
UNKNOWN_EPOCH = "redis-unknown"


# ---------------------------------------------------------------------------------------------
# Keys


class RunKeys:
    """The Redis keys of one run, all sharing the hash tag ``{run_id}``."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"pcm:{{{run_id}}}:"
        self.config = self.prefix + "config"
        self.tasks = self.prefix + "tasks"
        self.reqs = self.prefix + "reqs"
        self.history = self.prefix + "history"
        self.sels = self.prefix + "sels"

    def state(self, task_id: str) -> str:
        return f"{self.prefix}state:{task_id}"

    def req(self, request_id: str) -> str:
        return f"{self.prefix}req:{request_id}"


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT,...[/0]`` -> the startup nodes and
    the connection options it sets (username, password, ssl)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://...): {scheme}://")
    netloc, _, path = rest.partition("/")
    if "?" in netloc or "?" in path or "#" in path:
        raise ValueError("a redis+cluster:// URL takes no query options")
    if path not in ("", "0"):
        raise ValueError("Redis Cluster has database 0 only: the URL path must be empty or /0")
    userinfo, _, hosts = netloc.rpartition("@")
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[scheme.lower()]}
    if userinfo:
        user, sep, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if sep:
            options["password"] = unquote(password)
    nodes = []
    for node in hosts.split(","):
        host, sep, port = node.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a Redis Cluster node must be HOST:PORT, got {node.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, options


# ---------------------------------------------------------------------------------------------
# Serialisation of the stored answer
#
# Layout (little-endian), one bytes value:
#   0   b"S"                    kind byte of the idempotency record
#   1   u8 format version (1), 2 zero bytes
#   4   u32 H, the header length
#   8   header JSON (H bytes): state_version and staleness first, each written as 20
#       characters (right-aligned, so the fold can set them in place: VERSION_AT and
#       STALENESS_AT), then selection_id, kept_chunks, total_chunks, skipped_trajectories,
#       keep_probs, keep_fraction, predicted_efficiency, predicted_rate (absent in records
#       written before them: 0, none and none), n (trajectories), m (chunks), k (stored
#       weights), digest (of the request; absent in records written before digests).
#       Records written before staleness have it elsewhere in the header, or not at all (0).
#   W   float64[k] weights, W = 8 + H rounded up to a multiple of 8 (zero padding)
#       int32[n] lengths C_i
#       uint8[ceil(m / 8)] masks, np.packbits of the concatenated masks
# Sparse weights (k = kept chunks, the usual case) when every weight off the mask is +0.0, as
# the core makes them: a LIBERO step keeps ~20% of its chunks, so records are ~5x smaller.
# Dense (k = m) otherwise. Floats travel as raw float64 bits (weights) or Python's shortest
# round-trip repr (keep_probs in JSON): the loaded answer is bit-identical to the stored one.

_FORMAT_VERSION = 1
_PREFIX = struct.Struct("<cB2xI")
_VERSION_KEY = b'{"state_version":'
_STALENESS_KEY = b',"staleness":'
VERSION_AT = _PREFIX.size + len(_VERSION_KEY)  # where the record's state_version is written
STALENESS_AT = VERSION_AT + 20 + len(_STALENESS_KEY)  # and its staleness


def encode_answer(answer: SelectResponse, digest: str = "",
                  flat: FlatAnswer | None = None) -> bytes:
    """Pack a SelectResponse (and its request's digest) into an idempotency record (kind byte
    included). store_epoch is not stored: it says where an answer is read from. `flat`: the
    answer's masks and weights unsplit (packed as they are, not concatenated again)."""
    if flat is None:
        lengths = np.fromiter((len(m) for m in answer.masks), dtype="<i4",
                              count=len(answer.masks))
        masks = _concat(answer.masks, bool)
        weights = _concat(answer.weights, "<f8")
    else:
        lengths = flat.lengths.astype("<i4")
        masks = flat.mask.astype(bool, copy=False)
        weights = flat.weight.astype("<f8", copy=False)
        if lengths.shape[0] != len(answer.masks):
            raise ValueError("the flat answer has another number of trajectories")
    total = int(lengths.sum())
    if weights.shape != (total,) or masks.shape != (total,):
        raise ValueError("masks and weights must have one entry per chunk")
    if not weights.view(np.uint64)[~masks].any():  # all +0.0 off the mask: store kept only
        weights = weights[masks]
    rest = json.dumps({
        "selection_id": answer.selection_id,
        "kept_chunks": answer.kept_chunks,
        "total_chunks": answer.total_chunks,
        "skipped_trajectories": answer.skipped_trajectories,
        "keep_probs": answer.keep_probs,
        "keep_fraction": answer.keep_fraction,
        "predicted_efficiency": answer.predicted_efficiency,
        "predicted_rate": answer.predicted_rate,
        "n": len(lengths),
        "m": total,
        "k": len(weights),
        "digest": digest,
    }, separators=(",", ":")).encode()
    header = b"".join((_VERSION_KEY, b"%20d" % answer.state_version, _STALENESS_KEY,
                       b"%20d" % answer.staleness, b",", rest[1:]))
    pad = -(_PREFIX.size + len(header)) % 8
    return b"".join((
        _PREFIX.pack(_SELECT, _FORMAT_VERSION, len(header)),
        header,
        bytes(pad),
        weights.tobytes(),
        lengths.tobytes(),
        np.packbits(masks).tobytes(),
    ))


def decode_answer(record: bytes) -> SelectResponse:
    """The SelectResponse of an idempotency record: frozen, its arrays read-only."""
    return _decode(record)[0]


def record_digest(record: bytes) -> str:
    """The request digest stored in an idempotency record ("" if none)."""
    if record[:1] != _SELECT:
        return record[1:].decode("ascii", "replace")
    _, _, header_len = _PREFIX.unpack_from(record)
    header = json.loads(record[_PREFIX.size:_PREFIX.size + header_len])
    return str(header.get("digest", ""))


def _decode(record: bytes) -> tuple[SelectResponse, str]:
    kind, version, header_len = _PREFIX.unpack_from(record)
    if kind != _SELECT or version != _FORMAT_VERSION:
        raise ValueError(f"not a version-{_FORMAT_VERSION} select record: {record[:2]!r}")
    start = _PREFIX.size
    header = json.loads(record[start:start + header_len])
    n, m, k = header.pop("n"), header.pop("m"), header.pop("k")
    digest = str(header.pop("digest", ""))
    offset = start + header_len + (-(start + header_len) % 8)
    stored = np.frombuffer(record, dtype="<f8", count=k, offset=offset)
    offset += 8 * k
    lengths = np.frombuffer(record, dtype="<i4", count=n, offset=offset)
    offset += 4 * n
    bits = np.frombuffer(record, dtype=np.uint8, count=(m + 7) // 8, offset=offset)
    masks = np.unpackbits(bits, count=m).view(bool)
    masks.flags.writeable = False
    if k == m:
        weights = stored  # a read-only view of the record
    else:
        weights = np.zeros(m)
        weights[masks] = stored
        weights.flags.writeable = False
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    if (ends[-1] if ends else 0) != m:
        raise ValueError(f"corrupt select record: trajectory lengths do not sum to {m}")
    spans = list(zip([0, *ends], ends, strict=False))
    answer = SelectResponse(masks=[masks[i:j] for i, j in spans],
                            weights=[weights[i:j] for i, j in spans], **header)
    return answer, digest


def _concat(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(arrays).astype(dtype, copy=False)


def _stream_fields(fields: Any) -> dict[bytes, bytes]:
    """A stream entry's fields: a dict, or the raw flat [field, value, ...] list that redis-py's
    cluster transactions return (they apply no response callbacks)."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _record_kind(record: bytes) -> RequestKind:
    return "select" if record[:1] == _SELECT else "report"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class _SelectCopy:
    """A run's state as this process last read or was answered by a commit
    (`snapshot_for_select`)."""

    raw_config: bytes  # the config as stored: FOLD_SELECT compares it
    config: RunConfig
    state_version: int
    outcome_reports: int
    revision: int
    tasks: dict[str, TaskState | None]  # None: the task had no state
    as_of: dict[str, int]  # task -> the run's state_version its state is from


def _redis_op(op: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Map Redis errors of a store method to StoreUnavailable naming `op`, calling on_error."""

    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            store = args[0]
            assert isinstance(store, RedisStore)
            if store.cluster and len(args) > 1 and isinstance(args[1], str):
                store._thread.run_id = args[1]  # the run whose shard `epoch` names
            try:
                return method(*args, **kwargs)
            except (redis.RedisError, RedisClusterException) as exc:
                raise store._unavailable(op, exc) from exc

        return call

    return wrap


class RedisStore:
    """PhaseStore over Redis: one server (any Redis reachable by one URL) or a Redis Cluster
    (a ``redis+cluster://`` URL). Thread-safe: one connection pool (per node) shared by all
    threads."""

    # Set in __init__ for one Redis; on first use in cluster mode (see __getattr__). In cluster
    # mode `_redis` is a redis.cluster.RedisCluster, which has the same command API.
    _redis: redis.Redis
    _put_config: Any
    _commit_select: Any
    _record_report: Any
    _reconcile_select: Any
    _delete_run: Any

    def __init__(
        self,
        url: str,
        *,
        on_error: Callable[[str], None] | None = None,
        request_ttl_s: int = 86400,
        history_maxlen: int = 10000,
        socket_timeout_s: float = 0.5,
        socket_connect_timeout_s: float = 0.25,
        max_connections: int | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        if request_ttl_s < 1:
            raise ValueError("request_ttl_s must be at least 1")
        if history_maxlen < 1:
            raise ValueError("history_maxlen must be at least 1")
        self.url = url
        self.request_ttl_s = int(request_ttl_s)
        self.history_maxlen = int(history_maxlen)
        self._on_error = on_error
        self._epoch = UNKNOWN_EPOCH
        self.cluster = client is None and is_cluster_url(url)
        self._thread = threading.local()  # cluster mode: run_id of the thread's last call
        self._node_epochs: dict[str, str] = {}  # cluster mode: "host:port" -> epoch
        self._connect_lock = threading.Lock()
        # run_id -> the state last read here or answered by a commit: a select computes on it
        # and the commit folds into the stored state (refusing a copy beyond the bound).
        self._copies: dict[str, _SelectCopy] = {}
        self._copies_lock = threading.Lock()
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_connect_timeout_s,
            "max_connections": max_connections,
            "health_check_interval": 0,
            "client_name": "pcm-selector",
        }
        if self.cluster:
            nodes, url_options = parse_cluster_url(url)  # ValueError now, not on first use
            self._cluster_args = (nodes, {**options, **url_options})
            return
        self._bind(client if client is not None else redis.Redis.from_url(
            url,
            # One immediate reconnect on a dropped connection; never on a timeout, never a
            # backoff loop: a down Redis must fail the call fast.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            redis_connect_func=self._on_connect,
            **options,
        ))

    def _bind(self, client: redis.Redis) -> None:
        self._redis = client
        self._put_config = client.register_script(lua.PUT_CONFIG)
        self._commit_select = client.register_script(lua.FOLD_SELECT)
        self._record_report = client.register_script(lua.RECORD_REPORT)
        self._reconcile_select = client.register_script(lua.RECONCILE_SELECT)
        self._delete_run = client.register_script(lua.DELETE_RUN)

    def __getattr__(self, name: str) -> Any:
        """Cluster mode: the client and scripts, connecting on first use (RedisCluster reads
        the slot map when it is made, so it is made when a call needs it)."""
        if name not in ("_redis", "_put_config", "_commit_select", "_record_report",
                        "_reconcile_select", "_delete_run") or not self.__dict__.get("cluster"):
            raise AttributeError(name)
        with self._connect_lock:
            if "_redis" not in self.__dict__:
                from redis.cluster import ClusterNode, RedisCluster

                nodes, options = self._cluster_args
                cluster = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                    # One immediate retry after a connection error or CLUSTERDOWN, on a fresh
                    # slot map (a failover's new primary); no backoff loop.
                    retry=Retry(NoBackoff(), 1),
                    require_full_coverage=False,
                    redis_connect_func=self._on_cluster_connect,
                    **options,
                )
                self._bind(cluster)  # type: ignore[arg-type]
        return self.__dict__[name]

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (a RedisCluster in cluster mode)."""
        return self._redis

    @property
    def epoch(self) -> str:
        """The Redis server's run_id as of the newest connection (changes on a restart); in
        cluster mode, that of the primary serving the slot of the calling thread's last run."""
        if not self.cluster:
            return self._epoch
        run_id = getattr(self._thread, "run_id", None)
        if run_id is None or "_redis" not in self.__dict__:
            return self._epoch
        try:
            node = self._redis.get_node_from_key(RunKeys(run_id).config)  # type: ignore[attr-defined]
        except (redis.RedisError, RedisClusterException):
            return UNKNOWN_EPOCH
        return self._node_epochs.get(node.name, UNKNOWN_EPOCH) if node else UNKNOWN_EPOCH

    def _on_connect(self, connection: Any) -> None:
        """redis-py's hook on every new connection: the usual handshake, then INFO server for
        the server's run_id (a restarted server has a new one)."""
        connection.on_connect()
        epoch = self._server_epoch(connection)
        if epoch is not None and epoch != self._epoch:
            if self._epoch != UNKNOWN_EPOCH:
                log.warning("redis store: connected to a new Redis incarnation (%s)", epoch)
            self._epoch = epoch

    def _on_cluster_connect(self, connection: Any) -> None:
        """RedisCluster's hook (after its handshake): the node's run_id, per node."""
        epoch = self._server_epoch(connection)
        if epoch is None:
            return
        name = f"{connection.host}:{connection.port}"
        previous = self._node_epochs.get(name)
        if previous is not None and previous != epoch:
            log.warning("redis store: cluster node %s is a new Redis incarnation (%s)", name,
                        epoch)
        self._node_epochs[name] = epoch
        self._epoch = epoch

    @staticmethod
    def _server_epoch(connection: Any) -> str | None:
        """"redis-" + the run_id of the server at the other end of `connection`, or None."""
        try:
            connection.send_command("INFO", "server")
            info = connection.read_response()
        except redis.ResponseError:  # INFO renamed or denied: no restart detection
            return None
        text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("run_id:"):
                return "redis-" + line.partition(":")[2].strip()
        return None

    def close(self) -> None:
        client = self.__dict__.get("_redis")
        if client is not None:
            client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- PhaseStore -------------------------------------------------------------------------------

    @_redis_op("ping")
    def ping(self) -> None:
        if not self.cluster:
            self._redis.ping()
            return
        # A cluster answers if any primary does: a shard that is down fails only the calls
        # for its slots, and must not take every selector out of its load balancer.
        cluster: Any = self._redis
        try:
            cluster.ping()
            return
        except (redis.RedisError, RedisClusterException) as exc:
            error: Exception = exc
        for node in cluster.get_primaries():
            try:
                cluster.ping(target_nodes=node)
                return
            except (redis.RedisError, RedisClusterException) as exc:
                error = exc
        raise error

    @_redis_op("put_config")
    def put_config(self, run_id: str, config: RunConfig) -> bool:
        keys = RunKeys(run_id)
        self._forget(run_id)
        return bool(self._put_config(keys=[keys.config], args=[_dumps(config.to_dict())]))

    @_redis_op("get_config")
    def get_config(self, run_id: str) -> RunConfig | None:
        raw = self._redis.hget(RunKeys(run_id).config, "config")
        return None if raw is None else RunConfig.from_dict(json.loads(raw))

    @_redis_op("delete_run")
    def delete_run(self, run_id: str) -> bool:
        keys = RunKeys(run_id)
        self._forget(run_id)
        for _ in range(DELETE_ATTEMPTS):
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.smembers(keys.tasks)
                pipe.zrange(keys.reqs, 0, -1)
                raw_tasks, raw_reqs = pipe.execute()
            tasks = [t.decode() for t in raw_tasks]
            reqs = [r.decode() for r in raw_reqs]
            script_keys = [keys.config, keys.tasks, keys.reqs, keys.history, keys.sels,
                           *(keys.state(t) for t in tasks), *(keys.req(r) for r in reqs)]
            result = int(self._delete_run(keys=script_keys, args=[len(tasks), *tasks, *reqs]))
            if result >= 0:
                return result == 1
            # A commit added a task or request since we listed them: list again.
        raise StoreUnavailable(f"redis delete_run: run {clip(run_id)} kept changing during "
                               f"{DELETE_ATTEMPTS} attempts; retry")

    @_redis_op("load")
    def load(self, run_id: str, task_ids: Iterable[str] | None = None) -> RunSnapshot | None:
        keys = RunKeys(run_id)
        if task_ids is not None:
            names = list(dict.fromkeys(task_ids))
            head, states, _ = self._read_snapshot(keys, names, with_tasks=False)
        else:
            head, states = self._load_all(keys, run_id)
        raw_config, version, reports, revision = head
        if raw_config is None:
            return None
        return RunSnapshot(
            config=RunConfig.from_dict(json.loads(raw_config)),
            state_version=int(version),
            outcome_reports=int(reports),
            tasks={t: decode_state(s) for t, s in states.items()},
            revision=int(revision or 0),
        )

    @_redis_op("load")
    def snapshot_for_select(self, run_id: str, task_ids: Iterable[str]) -> RunSnapshot | None:
        """The run's state as this process last read or was answered by a commit, if that
        covers the tasks (no round trip), else read now (one MULTI). It may lack a few commits
        (its state_version is the oldest of the tasks'): commit_select folds into the stored
        state, and refuses a copy beyond the staleness bound or of another config, answering
        the current state, which the next call returns. Callers must not modify what it
        returns."""
        names = list(dict.fromkeys(task_ids))
        with self._copies_lock:
            copy = self._copies.get(run_id)
        if copy is None or any(t not in copy.tasks for t in names):
            head, states, _ = self._read_snapshot(RunKeys(run_id), names, with_tasks=False)
            raw_config, version, reports, revision = head
            if raw_config is None:
                self._forget(run_id)
                return None
            copy = self._remember_copy(run_id, raw_config, int(version), int(reports),
                                       int(revision or 0), names, states)
        tasks = {t: s for t in names if (s := copy.tasks[t]) is not None}
        # the oldest of the tasks' versions: staleness counts every commit any of them may lack
        version = min((copy.as_of[t] for t in names), default=copy.state_version)
        return RunSnapshot(config=copy.config, state_version=version,
                           outcome_reports=copy.outcome_reports, tasks=tasks,
                           revision=copy.revision)

    def _remember_copy(self, run_id: str, raw_config: bytes, version: int, reports: int,
                       revision: int, names: list[str], states: dict[str, Any],
                       config: RunConfig | None = None) -> _SelectCopy:
        copy = _SelectCopy(
            raw_config=raw_config,
            config=config if config is not None else RunConfig.from_dict(json.loads(raw_config)),
            state_version=version, outcome_reports=reports, revision=revision,
            tasks={t: (decode_state(states[t]) if states.get(t) else None) for t in names},
            as_of=dict.fromkeys(names, version))
        with self._copies_lock:
            self._copies.pop(run_id, None)
            while len(self._copies) >= SELECT_CACHE_RUNS:
                self._copies.pop(next(iter(self._copies)))
            self._copies[run_id] = copy
        return copy

    def _forget(self, run_id: str) -> None:
        with self._copies_lock:
            self._copies.pop(run_id, None)

    @_redis_op("get_request")
    def get_request(self, run_id: str, request_id: str,
                    digest: str = "") -> tuple[RequestKind, Any] | None:
        key = RunKeys(run_id).req(request_id)
        record: bytes | None = self._redis.get(key)  # type: ignore[assignment]
        if record is None:
            return None
        if _record_kind(record) == "report":
            check_digest(request_id, record_digest(record), digest)
            return ("report", None)
        answer, stored = _decode(record)
        check_digest(request_id, stored, digest)
        return ("select", answer)

    @_redis_op("commit_select")
    def commit_select(self, run_id: str, request_id: str, read_version: int,
                      config: RunConfig, update: StateUpdate, answer: SelectResponse,
                      history: dict[str, Any], *, digest: str = "",
                      aliases: tuple[str, ...] = (),
                      max_staleness: int | None = None,
                      flat: FlatAnswer | None = None) -> CommitResult:
        keys = RunKeys(run_id)
        tasks = list(update.tasks)
        selections = [answer.selection_id, *aliases]
        with self._copies_lock:
            copy = self._copies.get(run_id)
        raw_config = (copy.raw_config if copy is not None and copy.config == config
                      else _dumps(config.to_dict()).encode())
        entry = _dumps(history)
        entry = entry[:-1] + "," if len(entry) > 2 else "{"  # FOLD_SELECT appends the rest
        try:
            result = self._commit_select(
                keys=[keys.config, keys.req(request_id), keys.reqs, keys.history, keys.tasks,
                      keys.sels, *(keys.state(t) for t in tasks)],
                args=[read_version, -1 if max_staleness is None else max_staleness, request_id,
                      encode_answer(answer, digest, flat), VERSION_AT, STALENESS_AT,
                      self.request_ttl_s, entry, self.history_maxlen, raw_config,
                      encode_fold_params(update.eta, update.bias_corrected, update.window),
                      len(selections), *selections, *tasks,
                      *(encode_update(update.tasks[t]) for t in tasks)],
            )
        except BaseException:
            self._forget(run_id)
            raise
        status = result[0]
        if status == b"missing":
            self._forget(run_id)
            raise NotFound(f"run {clip(run_id)} not found")
        if status == b"stale":
            raw, version, reports, revision = result[1:5]
            if raw:
                self._remember_copy(run_id, raw, int(version), int(reports), int(revision),
                                    tasks, dict(zip(tasks, result[5:], strict=True)))
            else:
                self._forget(run_id)
            return CommitResult(CommitStatus.STALE)
        if status == b"replay":
            record = result[1]
            if _record_kind(record) != "select":
                raise Conflict("request_id", "already used by an outcome report")
            stored_answer, stored = _decode(record)
            check_digest(request_id, stored, digest)
            return CommitResult(CommitStatus.REPLAY, stored_answer)
        if status == b"phases":
            self._forget(run_id)
            raise InvalidArgument("run_id", f"run {clip(run_id)}: the stored state of task "
                                            f"{clip(result[1].decode())} has another number "
                                            "of phases than the run")
        version, staleness, revision = int(result[1]), int(result[2]), int(result[3])
        folded = {t: decode_state(raw) for t, raw in zip(tasks, result[4:], strict=True)}
        self._merge_copy(run_id, raw_config, config, version, revision, folded)
        return CommitResult(CommitStatus.COMMITTED, answer.model_copy(
            update={"state_version": version, "staleness": staleness}))

    def _merge_copy(self, run_id: str, raw_config: bytes, config: RunConfig, version: int,
                    revision: int, folded: dict[str, TaskState]) -> None:
        """Keep the states a commit answered (as of `version`) in this process's copy."""
        with self._copies_lock:
            base = self._copies.get(run_id)
            if base is None or base.raw_config != raw_config:
                tasks: dict[str, TaskState | None] = dict(folded)
                self._copies.pop(run_id, None)
                while len(self._copies) >= SELECT_CACHE_RUNS:
                    self._copies.pop(next(iter(self._copies)))
                self._copies[run_id] = _SelectCopy(
                    raw_config=raw_config, config=config, state_version=version,
                    outcome_reports=0, revision=revision, tasks=tasks,
                    as_of=dict.fromkeys(folded, version))
                return
            newer = {t: s for t, s in folded.items() if base.as_of.get(t, -1) < version}
            self._copies[run_id] = _SelectCopy(
                raw_config=raw_config, config=base.config,
                state_version=max(base.state_version, version),
                outcome_reports=base.outcome_reports, revision=max(base.revision, revision),
                tasks={**base.tasks, **newer},
                as_of={**base.as_of, **dict.fromkeys(newer, version)})

    @_redis_op("reconcile_select")
    def reconcile_select(self, run_id: str, request_id: str, counted: SelectResponse,
                         kept_delta: dict[str, np.ndarray], answer: SelectResponse,
                         history: dict[str, Any], *,
                         aliases: tuple[str, ...] = ()) -> CommitResult:
        keys = RunKeys(run_id)
        record: bytes | None = self._redis.get(keys.req(request_id))  # type: ignore[assignment]
        if record is None or _record_kind(record) != "select":
            return CommitResult(CommitStatus.GONE)
        if not _decode(record)[0].same_as(counted):
            return CommitResult(CommitStatus.CONFLICT)
        tasks = list(kept_delta)
        selections = [answer.selection_id, *aliases]
        result = self._reconcile_select(
            keys=[keys.config, keys.req(request_id), keys.reqs, keys.history, keys.sels,
                  *(keys.state(t) for t in tasks)],
            args=[hashlib.sha1(record).hexdigest(), request_id,
                  encode_answer(answer, record_digest(record)), self.request_ttl_s,
                  _dumps(history), self.history_maxlen, len(selections), *selections,
                  *(encode_counts(kept_delta[t]) for t in tasks)],
        )
        status = result[0]
        if status == b"missing":
            self._forget(run_id)
            raise NotFound(f"run {clip(run_id)} not found")
        if status == b"gone":
            return CommitResult(CommitStatus.GONE)
        if status == b"conflict":
            return CommitResult(CommitStatus.CONFLICT)
        if status == b"no_state":
            raise StoreUnavailable(f"run {clip(run_id)}: the state of a committed batch is "
                                   "missing; retry")
        return CommitResult(CommitStatus.COMMITTED)

    @_redis_op("record_report")
    def record_report(self, run_id: str, request_id: str, report: OutcomeReport,
                      history: dict[str, Any], *, digest: str = "",
                      require_selection: bool = False) -> bool:
        keys = RunKeys(run_id)
        result = self._record_report(
            keys=[keys.config, keys.req(request_id), keys.reqs, keys.history, keys.sels],
            args=[request_id, self.request_ttl_s, _dumps(history), self.history_maxlen,
                  report.selection_id if require_selection else "",
                  b"R" + digest.encode("ascii")],
        )
        status = result[0]
        if status == b"missing":
            raise NotFound(f"run {clip(run_id)} not found")
        if status == b"stored":
            record = result[1]
            if _record_kind(record) != "report":
                raise Conflict("request_id", "already used by a select request")
            check_digest(request_id, record_digest(record), digest)
            return False
        if status == b"no_selection":
            raise unknown_selection(run_id, report.selection_id)
        return True

    @_redis_op("history")
    def history(self, run_id: str, count: int = 100) -> list[dict[str, Any]]:
        keys = RunKeys(run_id)
        # The stream is trimmed approximately (MAXLEN ~): never show more than the cap.
        count = min(count, self.history_maxlen)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(keys.config)
            pipe.xrevrange(keys.history, count=max(count, 1))
            exists, entries = pipe.execute()
        if not exists:
            raise NotFound(f"run {clip(run_id)} not found")
        if count <= 0:
            return []
        return [json.loads(_stream_fields(fields)[b"e"]) for _, fields in reversed(entries)]

    # -- helpers ----------------------------------------------------------------------------------

    def _load_all(self, keys: RunKeys, run_id: str) -> tuple[list[Any], dict[str, bytes]]:
        """Config, version and every task's state, consistent with one another: the task list is
        read in the same MULTI as the states and must match the list the states were read for."""
        members: set[bytes] = self._redis.smembers(keys.tasks)  # type: ignore[assignment]
        names = sorted(t.decode() for t in members)
        for _ in range(LOAD_ATTEMPTS):
            head, states, members = self._read_snapshot(keys, names, with_tasks=True)
            current = sorted(t.decode() for t in members)
            if current == names:
                return head, states
            names = current
        raise StoreUnavailable(f"redis load: run {clip(run_id)} kept changing during "
                               f"{LOAD_ATTEMPTS} attempts; retry")

    def _read_snapshot(self, keys: RunKeys, names: list[str], *,
                       with_tasks: bool) -> tuple[list[Any], dict[str, bytes], set[bytes]]:
        """In one MULTI: the config hash's fields, the named tasks' states (absent ones left
        out) and, if asked, the run's task set."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.config, ["config", "state_version", "outcome_reports", "revision"])
            if names:
                # MGET as a plain command: redis-py refuses pipe.mget() in cluster pipelines
                pipe.execute_command("MGET", *(keys.state(t) for t in names))
            if with_tasks:
                pipe.smembers(keys.tasks)
            replies = pipe.execute()
        raw_states = replies[1] if names else []
        states = {t: s for t, s in zip(names, raw_states, strict=True) if s is not None}
        return replies[0], states, (replies[-1] if with_tasks else set())

    def _unavailable(self, op: str, exc: Exception) -> StoreUnavailable:
        log.warning("redis store: %s failed: %s: %s", op, type(exc).__name__, exc)
        if self._on_error is not None:
            try:
                self._on_error(op)
            except Exception:  # the metrics hook must not mask the store error
                log.exception("redis store: on_error callback failed")
        return StoreUnavailable(f"redis store unavailable during {op}: "
                                f"{type(exc).__name__}: {exc}")
