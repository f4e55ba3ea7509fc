"""Jobs to workers: the queue every kind of worker shares, and the local workers' ZeroMQ link.

`WorkerPool` holds the queue in submission order and pairs each idle worker (least-recently-used first) with the
oldest queued job it serves of the client that has the fewest jobs running, so that one client's many jobs (a
group of variants) share the workers with other clients' instead of holding them all in turn. `Broker` is the
pool of the service's own worker processes, ZeroMQ's load-balancing pattern with heartbeats: they connect DEALERs to
a private ROUTER and say `ready`. A worker that misses heartbeats, exits, or says `ready` while it still
holds a job has lost that job: the service requeues it, and the next worker resumes it from the
checkpoint it last shipped. (`backend.service.ray_runner` is the same pool on a Ray cluster.)
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from backend.service.protocol import (
    LIVENESS,
    TRUSTED_LIMITS,
    WORKER_TO_BROKER,
    Frames,
    Message,
    ProtocolError,
    decode,
    encode,
)


@dataclass
class WorkerInfo:
    identity: bytes
    socket: zmq.Socket
    models: frozenset[str]
    name: str
    pid: int
    last_heard: float
    job: str | None = None

    @property
    def key(self) -> tuple[int, bytes]:
        return id(self.socket), self.identity


class JobHost(Protocol):
    """What a pool reports to the service (`worker` has at least `name`, `models` and `job`)."""

    def job_message(self, job: str, message: Message, worker: Any) -> None: ...

    def job_lost(self, job: str, worker: Any, why: str) -> None: ...


class WorkerPool:
    """The queue and the idle workers; subclasses move the jobs (`send`, `cancel`, `tick`)."""

    def __init__(self, host: JobHost) -> None:
        self.host = host
        self.queue: deque[str] = deque()
        self.workers: dict[Hashable, Any] = {}
        self.idle: list[Hashable] = []  # least recently used first

    # --- the queue

    def enqueue(self, job: str, front: bool = False) -> None:
        if front:
            self.queue.appendleft(job)
        else:
            self.queue.append(job)

    def dequeue(self, job: str) -> bool:
        try:
            self.queue.remove(job)
            return True
        except ValueError:
            return False

    def position(self, job: str) -> int | None:
        try:
            return self.queue.index(job)
        except ValueError:
            return None

    def running_on(self, job: str) -> Any:
        return next((w for w in self.workers.values() if w.job == job), None)

    # --- dispatch

    def match(self, model_of: Callable[[str], str],
              owner_of: Callable[[str], str] | None = None) -> list[tuple[str, Any]]:
        """Pair queued jobs with idle workers that serve their model, and mark them busy: for each worker the
        oldest job it serves among those of the clients (`owner_of`) with the fewest jobs running."""
        pairs = []
        for key in list(self.idle):
            worker = self.workers[key]
            servable = [j for j in self.queue if model_of(j) in worker.models]
            if owner_of is not None and servable:
                running: dict[str, int] = {}
                for busy in self.workers.values():
                    if busy.job is not None:
                        running[owner_of(busy.job)] = running.get(owner_of(busy.job), 0) + 1
                servable.sort(key=lambda j: running.get(owner_of(j), 0))  # stable: queue order within a count
            job = servable[0] if servable else None
            if job is not None:
                self.queue.remove(job)
                self.idle.remove(key)
                worker.job = job
                pairs.append((job, worker))
        return pairs

    def release(self, worker: Any) -> None:
        """Make a worker idle again without a job (its task could not be sent)."""
        worker.job = None
        if worker.key not in self.idle:
            self.idle.append(worker.key)

    def send(self, worker: Any, frames: Frames) -> None:
        raise NotImplementedError

    def cancel(self, job: str) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """The service is starting: before its sockets listen."""

    poll_ms = 100  # how long the service's loop may wait for clients before it calls `tick` again

    def tick(self) -> None:
        """Called every turn of the service's loop."""

    def close(self) -> None:
        """The service is stopping."""


class Broker(WorkerPool):
    def __init__(self, host: JobHost, heartbeat_s: float = 1.0) -> None:
        super().__init__(host)
        self.heartbeat_s = heartbeat_s
        self._last_beat = 0.0

    # --- worker messages

    def receive(self, socket: zmq.Socket) -> None:
        identity, *frames = socket.recv_multipart(copy=True)
        try:
            message = decode(frames, TRUSTED_LIMITS, WORKER_TO_BROKER)
        except ProtocolError as exc:
            print(f"service: dropped a malformed worker message ({exc.code}: {exc.message})", file=sys.stderr)
            return
        worker = self.workers.get((id(socket), identity))
        if message.type == "ready":
            worker = self._ready(socket, identity, message, worker)
        elif worker is None:
            return  # a worker the service does not know (it restarted): it will time out and say ready again
        worker.last_heard = time.monotonic()
        job = message.fields.get("job")
        if message.type in ("progress", "checkpoint", "result", "error") and job is not None and job == worker.job:
            if message.type in ("result", "error"):
                worker.job = None
            self.host.job_message(job, message, worker)

    def _ready(self, socket: zmq.Socket, identity: bytes, message: Message,
               worker: WorkerInfo | None) -> WorkerInfo:
        if worker is None:
            f = message.fields
            worker = WorkerInfo(identity, socket, frozenset(m for m in f["models"] if isinstance(m, str)),
                                str(f.get("name", identity.hex())), int(f.get("pid", 0)), time.monotonic())
            self.workers[worker.key] = worker
            print(f"service: worker {worker.name} joined ({', '.join(sorted(worker.models))})", file=sys.stderr)
        elif worker.job is not None:
            job, worker.job = worker.job, None
            self.host.job_lost(job, worker, f"worker {worker.name} dropped it")
        if worker.key not in self.idle:
            self.idle.append(worker.key)
        return worker

    # --- dispatch and liveness

    def send(self, worker: WorkerInfo, frames: Frames) -> None:
        worker.socket.send_multipart([worker.identity, *frames], copy=False)

    def tick(self, now: float | None = None) -> None:
        """Send heartbeats and drop workers that have gone quiet (their jobs are lost)."""
        now = time.monotonic() if now is None else now
        for worker in list(self.workers.values()):
            if now - worker.last_heard > LIVENESS * self.heartbeat_s:
                self.remove(worker, f"worker {worker.name} stopped answering")
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            beat = encode("heartbeat", {"time": time.time(), "queue": len(self.queue)})
            for worker in self.workers.values():
                self.send(worker, beat)

    def remove(self, worker: WorkerInfo, why: str) -> None:
        self.workers.pop(worker.key, None)
        if worker.key in self.idle:
            self.idle.remove(worker.key)
        print(f"service: {why}", file=sys.stderr)
        if worker.job is not None:
            job, worker.job = worker.job, None
            self.host.job_lost(job, worker, why)

    def remove_pid(self, pid: int, socket: zmq.Socket) -> None:
        for worker in [w for w in self.workers.values() if w.pid == pid and w.socket is socket]:
            self.remove(worker, f"worker {worker.name} exited")

    def cancel(self, job: str) -> bool:
        worker = self.running_on(job)
        if worker is not None:
            self.send(worker, encode("cancel", {"job": job}))
        return worker is not None
