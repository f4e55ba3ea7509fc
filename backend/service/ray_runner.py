"""Jobs on a Ray cluster (`latentforge serve --ray ADDRESS`): one long-lived actor per GPU.

Each actor starts a job process that loads the service's models once, in its constructor, and keeps them
between jobs; the actor watches it as a local worker watches its own (`backend.service.worker`), so a job
that holds its interpreter never silences the actor, and one that dies or hangs is given back. A job is
one call of the actor's `run`, a Ray streaming generator that yields the same protocol frames a local
worker sends over ZeroMQ (progress, checkpoint, result, error), so the service handles both kinds of
worker with one code path; only bytes cross Ray, never our own objects. Checkpoints come back to the
service's job store with the progress, so a job whose actor (or node) dies resumes from its last
checkpoint on any other actor, with no shared disk. Ray restarts a dead actor (on another node if its
node is gone); the pool waits for it to answer before it gives it another job.

The actors belong to the service's Ray driver: if the service dies, Ray ends them with it, and the
restarted service makes new ones and requeues what was running, from its checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from backend import __version__
from backend.errors import LatentForgeError
from backend.service.broker import JobHost, WorkerPool
from backend.service.protocol import (
    BROKER_TO_WORKER,
    TRUSTED_LIMITS,
    WORKER_TO_BROKER,
    Frames,
    ProtocolError,
    decode,
    encode,
    error_fields,
)
from backend.service.worker import HANG_S, JobProcess, JobProcessGone

RAY_REQUIREMENT = "ray>=2.40"  # the same lower bound as the `ray` extra in pyproject.toml
NAMESPACE = "latentforge"
SCALE_EVERY_S = 10.0  # how often an automatically sized pool looks for GPUs (or nodes) that joined
DRAIN = 50  # messages taken from one actor per loop turn, so one chatty job cannot starve the clients
MAX_CREATE_FAILURES = 3  # an actor whose constructor keeps failing (a model it cannot load) is given up
BUSY_POLL_MS = 10  # the service loop's wait while a job runs on Ray: progress reaches clients this fast


def import_ray() -> Any:
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise LatentForgeError("--ray needs Ray, which is not installed in this Python environment",
                               f"pip install 'latentforge[ray]' (or: pip install '{RAY_REQUIREMENT}'), "
                               "or serve without --ray to use local worker processes") from None
    return ray


class JobActor:
    """A Ray actor: the service's models loaded once in its job process, one job at a time (`run`), `cancel`
    alongside. Like a local worker, it runs no job code itself (`backend.service.worker`): the job process
    it watches does, and one that dies or hangs is ended, its job given back, and a new one started."""

    def __init__(self, models: list[str], device: str, hang_s: float = HANG_S) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.device = device
        self.process = JobProcess(models, device, self.name, hang_s=hang_s)
        self.models: list[str] = []
        self.lock = threading.Lock()  # the job process's link: one thread at a time
        self.inbox: dict[str, deque] = {}  # each running `run`'s messages, by job
        self.current: str | None = None  # the job of the latest `run`
        self._started = False
        self._ensure_started()

    def _ensure_started(self) -> None:
        """(Re)start the job process if it is not running, and wait until its models are loaded."""
        with self.lock:
            if self._started:
                return
            self.process.start()
            try:
                self.models = list(self.process.wait_ready()["models"])
            except JobProcessGone as exc:
                self.process.stop(0)
                raise LatentForgeError(f"worker {self.name}: {exc}", "see the actor's log for why") from None
            self._started = True
        print(f"worker {self.name} on {self.device}: serving {', '.join(self.models)} (Ray actor; job process "
              f"{self.process.process.pid})", file=sys.stderr, flush=True)

    def info(self) -> dict[str, Any]:
        self._ensure_started()  # after a job process that died or hung, its replacement answers first
        return {"name": self.name, "pid": os.getpid(), "models": self.models, "device": self.device,
                "version": __version__, "job_process": self.process.process.pid}

    def run(self, task: list[bytes]) -> Iterator[list[bytes]]:
        """Run one job (a `task` message) and yield its progress, checkpoint and final frames."""
        message = decode(task, TRUSTED_LIMITS, BROKER_TO_WORKER)
        job, model = message.fields["job"], message.fields["spec"].get("model", "")
        if model not in self.models:
            yield _bytes(encode("error", error_fields("unknown_model", f"worker {self.name} has not loaded "
                                                      f"{model!r}", job=job)))
            return
        self._ensure_started()
        with self.lock:
            # a new task while one runs means the service gave up on that one (it requeues it itself)
            if self.process.job is not None:
                self._settle(self.process.job)
            self.current = job
            self.inbox[job] = deque()
            self.process.send_task(task, job)
        ended = False
        try:
            while not ended and self.current == job:
                for frames, last in self._take(job):
                    yield _bytes(frames)
                    ended = ended or last
                if not ended and self._hung_or_dead():
                    return  # ends without a result: the service requeues the job
        finally:
            with self.lock:
                self.inbox.pop(job, None)
                if not ended and self.process.job == job and self._started:  # the service stopped reading
                    self.process.send(encode("cancel", {"job": job}))

    def _take(self, job: str) -> list[tuple[list, bool]]:
        """The job's messages waiting now (waiting up to a poll interval), each with whether it ends the job."""
        with self.lock:
            if self._started:
                for header, frames in self.process.receive(50):
                    if header.get("job") in self.inbox:
                        self.inbox[header["job"]].append((frames, header.get("type") in ("result", "error")))
            out = list(self.inbox.get(job, ()))
            self.inbox.get(job, deque()).clear()
        return out

    def _settle(self, job: str) -> None:
        """Cancel the job the process still runs and wait for its end (called with the lock held)."""
        self.process.send(encode("cancel", {"job": job}))
        while self.process.job == job and self.process.problem() is None:
            self.process.receive(50)
        if self.process.problem() is not None:
            self._end_process(self.process.problem())

    def _hung_or_dead(self) -> bool:
        with self.lock:
            why = self.process.problem() if self._started else "its job process is restarting"
            if why is not None and self._started:
                self._end_process(why)
        return why is not None

    def _end_process(self, why: str) -> None:
        print(f"worker {self.name}: {why}; ending it (the service resumes the job elsewhere)", file=sys.stderr,
              flush=True)
        self.process.stop(0)
        self._started = False

    def cancel(self, job: str) -> bool:
        with self.lock:
            if self._started and self.process.job == job:
                self.process.send(encode("cancel", {"job": job}))
                return True
        return False


def _bytes(frames: Frames) -> list[bytes]:
    return [bytes(f) for f in frames]


@dataclass
class ActorSlot:
    """One actor as the pool sees it: starting (waiting for `info`), idle, or running `job`."""

    key: int
    actor: Any
    name: str = ""
    models: frozenset[str] = frozenset()
    job: str | None = None
    stream: Any = None  # the ObjectRefGenerator of the running job
    starting: Any = None  # the pending `info()` call while the actor (re)starts
    failures: int = 0
    created: float = field(default_factory=time.monotonic)


class RayWorkers(WorkerPool):
    """The service's worker pool on a Ray cluster: the same queue and dispatch as local workers."""

    def __init__(self, host: JobHost, address: str, models: list[str], actors: int = 0, device: str = "auto",
                 cpus_per_actor: float = 1.0, hang_s: float = HANG_S) -> None:
        super().__init__(host)
        self.ray = import_ray()
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise LatentForgeError(f"--device {device!r} cannot be used with --ray", "use auto, cpu or cuda")
        if cpus_per_actor <= 0:
            raise LatentForgeError("--ray-cpus must be more than 0")
        self.address, self.models, self.wanted, self.device = address, models, actors, device
        self.cpus_per_actor, self.hang_s = cpus_per_actor, hang_s
        self._next_key = 0
        self._last_scale = 0.0
        self._actor_class: Any = None
        self.gpu = False

    # --- lifecycle

    def start(self) -> None:
        ray = self.ray
        options: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": True}
        if self.address == "local":  # a new cluster of this machine only, without Ray's dashboard
            options.update(address="local", include_dashboard=False)
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise LatentForgeError(f"cannot join the Ray cluster at {self.address!r}: {exc}",
                                   "start one with `ray start --head`, or pass --ray local") from None
        resources = ray.cluster_resources()
        self.gpu = self.device.startswith("cuda") or (self.device == "auto" and resources.get("GPU", 0) >= 1)
        if self.gpu and not resources.get("GPU"):
            print("service: the Ray cluster has no GPU yet; the actors wait for one (--device cpu for CPU actors)",
                  file=sys.stderr, flush=True)
        self._scale()
        print(f"service: on Ray at {self.address} ({resources.get('CPU', 0):g} CPUs, "
              f"{resources.get('GPU', 0):g} GPUs): {len(self.workers)} actor(s), one per "
              f"{'GPU' if self.gpu else f'{self.cpus_per_actor:g} CPUs'}", file=sys.stderr, flush=True)

    def _target(self) -> int:
        if self.wanted:
            return self.wanted
        resources = self.ray.cluster_resources()
        if self.gpu:
            return max(1, int(resources.get("GPU", 0)))
        return max(1, sum(1 for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0)
                          >= self.cpus_per_actor))  # one per CPU node: a model in every actor is costly

    def _scale(self) -> None:
        self._last_scale = time.monotonic()
        for _ in range(self._target() - len(self.workers)):
            self._create(ActorSlot(self._next_key, None))
            self._next_key += 1

    def _create(self, slot: ActorSlot) -> None:
        if self._actor_class is None:
            resources = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": self.cpus_per_actor}
            # restarted by Ray when it dies; a job in flight then fails, and the service requeues it itself
            self._actor_class = self.ray.remote(JobActor).options(max_restarts=-1, max_task_retries=0,
                                                                  max_concurrency=4, **resources)
        slot.actor = self._actor_class.remote(self.models, "cuda" if self.gpu else "cpu", self.hang_s)
        slot.starting, slot.created = slot.actor.info.remote(), time.monotonic()
        self.workers[slot.key] = slot

    def close(self) -> None:
        for slot in self.workers.values():
            try:
                self.ray.kill(slot.actor)
            except Exception as exc:  # already gone
                print(f"service: could not stop actor {slot.name}: {exc}", file=sys.stderr)
        self.workers.clear()
        self.idle.clear()
        self.ray.shutdown()

    # --- dispatch

    def send(self, worker: ActorSlot, frames: Frames) -> None:
        worker.stream = worker.actor.run.remote(_bytes(frames))

    def cancel(self, job: str) -> bool:
        slot = self.running_on(job)
        if slot is not None:
            slot.actor.cancel.remote(job)
        return slot is not None

    @property
    def poll_ms(self) -> int:
        """How long the service's loop may wait for clients before it must look at the actors again."""
        return BUSY_POLL_MS if any(s.stream is not None or s.starting is not None
                                   for s in self.workers.values()) else 100

    def tick(self) -> None:
        for slot in list(self.workers.values()):
            if slot.starting is not None:
                self._check_started(slot)
            if slot.stream is not None:
                self._pump(slot)
        if not self.wanted and time.monotonic() - self._last_scale > SCALE_EVERY_S:
            self._scale()

    def _check_started(self, slot: ActorSlot) -> None:
        ray = self.ray
        ready, _ = ray.wait([slot.starting], timeout=0)
        if not ready:
            return
        try:
            info = ray.get(slot.starting)
        except ray.exceptions.ActorUnavailableError:  # restarting, or a passing network fault: ask again
            slot.starting = slot.actor.info.remote()
            return
        except ray.exceptions.RayError as exc:
            self._create_failed(slot, exc)
            return
        slot.starting, slot.failures = None, 0
        slot.name, slot.models = str(info["name"]), frozenset(info["models"])
        if info.get("version") != __version__:
            print(f"service: actor {slot.name} runs latentforge {info.get('version')}, this service "
                  f"{__version__}: install the same version on every node", file=sys.stderr)
        print(f"service: worker {slot.name} joined on Ray ({info['device']}; {', '.join(sorted(slot.models))}; "
              f"{time.monotonic() - slot.created:.1f} s to start; job process {info.get('job_process')})",
              file=sys.stderr, flush=True)
        if slot.key not in self.idle:
            self.idle.append(slot.key)

    def _create_failed(self, slot: ActorSlot, exc: Exception) -> None:
        """Its constructor raised (Ray does not restart those): make it again, a few times."""
        slot.failures += 1
        cause = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
        if slot.failures >= MAX_CREATE_FAILURES:
            print(f"service: a Ray actor failed to start {slot.failures} times; giving up on it (last: {cause})",
                  file=sys.stderr, flush=True)
            self.workers.pop(slot.key, None)
            return
        print(f"service: a Ray actor failed to start ({cause}); making it again", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)
        self._create(slot)

    def _pump(self, slot: ActorSlot) -> None:
        ray = self.ray
        for _ in range(DRAIN):
            ready, _ = ray.wait([slot.stream], timeout=0)
            if not ready:
                return
            try:
                frames = ray.get(next(slot.stream))
            except StopIteration:
                self._finished(slot)
                return
            except ray.exceptions.RayError as exc:
                self._lost(slot, f"worker {slot.name} died ({type(exc).__name__})")
                return
            self._deliver(slot, frames)

    def _deliver(self, slot: ActorSlot, frames: list[bytes]) -> None:
        try:
            message = decode(frames, TRUSTED_LIMITS, WORKER_TO_BROKER)
        except ProtocolError as exc:
            print(f"service: dropped a malformed message from {slot.name} ({exc.code}: {exc.message})",
                  file=sys.stderr)
            return
        job = message.fields.get("job")
        if job is None or job != slot.job:
            return
        if message.type in ("result", "error"):
            slot.job = None
        self.host.job_message(job, message, slot)

    def _finished(self, slot: ActorSlot) -> None:
        slot.stream = None
        if slot.job is not None:  # the run ended without a result or an error: the job is lost
            self._lost(slot, f"worker {slot.name} ended job {slot.job} without a result")
            return
        if slot.key not in self.idle:
            self.idle.append(slot.key)

    def _lost(self, slot: ActorSlot, why: str) -> None:
        """The job goes back to the queue; the actor gets no other until it answers again (Ray restarts it)."""
        print(f"service: {why}", file=sys.stderr, flush=True)
        job, slot.job, slot.stream = slot.job, None, None
        if slot.key in self.idle:
            self.idle.remove(slot.key)
        slot.actor.cancel.remote(job)  # in case it still runs it (a lost connection, not a dead actor)
        slot.starting, slot.created = slot.actor.info.remote(), time.monotonic()
        if job is not None:
            self.host.job_lost(job, slot, why)
