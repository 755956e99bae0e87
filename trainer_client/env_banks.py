"""Where a `RolloutCollector`'s envs live: its env bank. A bank holds env slots and runs a round
of ops on them (`run([(slot, "reset", init_state) | (slot, "step", actions (K, A)), ...])`),
answering a `ResetOut` or `ChunkStep` per op in order.

- `LocalBank`: the envs in this process (tests, tiny runs);
- `ProcessBank`: the slots spread over spawned worker processes, one message per worker and
  round (the default with `num_workers > 0`);
- `trainer_client.vector_env.GymVectorBank`: gymnasium's `AsyncVectorEnv`, a process per slot.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from trainer_client.envs import ChunkEnv, ChunkStep, make_env

_RECV_POLL_S = 1.0


@dataclass(frozen=True)
class EnvInfo:
    """What the main process needs to know about the envs of a collector."""

    task_id: str
    instruction: str
    action_dim: int
    max_steps: int
    obs_keys: tuple[str, ...]
    gripper_threshold: float
    gripper_index: int  # action dim holding the gripper command
    num_init_states: int | None

    @classmethod
    def of(cls, env: ChunkEnv) -> EnvInfo:
        return cls(
            task_id=env.task_id,
            instruction=env.instruction,
            action_dim=env.action_dim,
            max_steps=env.max_steps,
            obs_keys=tuple(env.obs_keys),
            gripper_threshold=float(env.gripper_threshold),
            gripper_index=int(env.gripper_index),
            num_init_states=env.num_init_states,
        )


@dataclass
class ResetOut:
    obs: dict[str, np.ndarray]
    env_phase: int | None


# An op on one env slot: (slot, "reset", init_state) or (slot, "step", actions (K, A)).
Op = tuple[int, str, Any]


def _apply(env: ChunkEnv, kind: str, arg: Any) -> ResetOut | ChunkStep:
    if kind == "reset":
        obs = env.reset(int(arg))
        return ResetOut(obs, env.env_phase())
    elif kind == "step":
        return env.step_chunk(arg)
    else:
        raise ValueError(f"unknown env op {kind!r}")


def _worker_main(conn: Connection, spec: str, env_kwargs: dict[str, Any]) -> None:
    """Worker process: owns a list of envs, answers one message per request."""
    envs: list[ChunkEnv] = []
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            cmd = msg[0]
            if cmd == "close":
                break
            try:
                if cmd == "ensure":
                    while len(envs) < int(msg[1]):
                        envs.append(make_env(spec, **env_kwargs))
                    reply: Any = EnvInfo.of(envs[0]) if envs else None
                elif cmd == "run":
                    reply = [_apply(envs[i], kind, arg) for i, kind, arg in msg[1]]
                else:
                    raise ValueError(f"unknown worker command {cmd!r}")
                conn.send(("ok", reply))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except KeyboardInterrupt:
        pass
    finally:
        for env in envs:
            env.close()
        conn.close()


class LocalBank:
    """Env slots in this process."""

    def __init__(self, spec: str, env_kwargs: dict[str, Any]) -> None:
        self._spec = spec
        self._kwargs = env_kwargs
        self._envs: list[ChunkEnv] = []

    def ensure(self, n: int) -> EnvInfo:
        while len(self._envs) < max(n, 1):
            self._envs.append(make_env(self._spec, **self._kwargs))
        return EnvInfo.of(self._envs[0])

    def run(self, ops: list[Op]) -> list[ResetOut | ChunkStep]:
        return [_apply(self._envs[slot], kind, arg) for slot, kind, arg in ops]

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


class ProcessBank:
    """Env slots spread over worker processes: slot s lives in worker s % W at index s // W."""

    def __init__(self, spec: str, env_kwargs: dict[str, Any], num_workers: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for w in range(num_workers):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_worker_main,
                args=(child, spec, env_kwargs),
                name=f"pcm-env-worker-{w}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._closed = False

    @property
    def num_workers(self) -> int:
        return len(self._conns)

    def _recv(self, w: int) -> Any:
        conn = self._conns[w]
        try:
            while not conn.poll(_RECV_POLL_S):
                if not self._procs[w].is_alive():
                    raise EOFError
            status, payload = conn.recv()
        except (EOFError, OSError) as exc:
            self._procs[w].join(timeout=5)
            raise RuntimeError(
                f"env worker {w} died (exit code {self._procs[w].exitcode}); scripts that "
                "start workers need the `if __name__ == '__main__':` guard (spawn)"
            ) from exc
        if status != "ok":
            raise RuntimeError(f"env worker {w} failed:\n{payload}")
        return payload

    def _gather(self, workers: list[int]) -> dict[int, Any]:
        """Replies of `workers`, all read before raising the first error, so the pipes stay
        in step for the next request."""
        replies: dict[int, Any] = {}
        first_error: RuntimeError | None = None
        for w in workers:
            try:
                replies[w] = self._recv(w)
            except RuntimeError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return replies

    def ensure(self, n: int) -> EnvInfo:
        w_count = self.num_workers
        per_worker = [len(range(w, max(n, 1), w_count)) for w in range(w_count)]
        for w, count in enumerate(per_worker):
            self._conns[w].send(("ensure", count))
        infos = self._gather(list(range(w_count)))
        info = next((i for i in infos.values() if i is not None), None)
        if info is None:
            raise RuntimeError("no env was built")
        return info

    def run(self, ops: list[Op]) -> list[ResetOut | ChunkStep]:
        w_count = self.num_workers
        by_worker: dict[int, list[tuple[int, Op]]] = {}
        for pos, (slot, kind, arg) in enumerate(ops):
            by_worker.setdefault(slot % w_count, []).append((pos, (slot // w_count, kind, arg)))
        for w, items in by_worker.items():
            self._conns[w].send(("run", [op for _, op in items]))
        replies = self._gather(list(by_worker))
        out: list[Any] = [None] * len(ops)
        for w, items in by_worker.items():
            for (pos, _), res in zip(items, replies[w], strict=True):
                out[pos] = res
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("close",))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
