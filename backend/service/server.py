"""The service: a ROUTER for clients, a job store on disk, and a broker in front of the workers.

One thread owns every socket. Each client message is decoded and validated (protocol, then the task's
own settings) before anything is written or sent to a worker; a bad one gets an `error` reply and the
loop goes on. Jobs persist in the store, so a restarted service requeues what was queued or running
(resuming from the last checkpoint) and still serves every finished result.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from backend import __version__
from backend.errors import LatentForgeError
from backend.objectives import OBJECTIVES
from backend.presets import PRESETS
from backend.service import checkpoint_wire, tasks
from backend.service.broker import Broker, WorkerInfo
from backend.service.jobs import FINAL_STATES, JobRecord, JobStore, UnknownJob
from backend.service.protocol import (
    CLIENT_REQUESTS,
    MAX_FACES,
    MAX_PROMPT_CHARS,
    MAX_VERTICES,
    REQUEST_LIMITS,
    VERSION,
    Frames,
    Message,
    ProtocolError,
    decode,
    encode,
    error_fields,
)
from backend.service.security import Curve, check_bind
from backend.service.supervisor import LocalWorkers

DRAIN = 100  # messages handled per socket per loop turn, so neither side starves the other


class Refused(LatentForgeError):
    """A valid request the service declines; `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


@dataclass
class ServiceConfig:
    jobs_dir: Path
    models: list[str]
    bind: str = "tcp://127.0.0.1:5555"
    workers: int = 1  # local worker processes, one per entry of `devices`
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    broker_bind: str | None = None  # also accept remote workers here (--broker)
    keys_dir: Path | None = None
    max_queued_per_client: int = 8
    heartbeat_s: float = 1.0
    max_crashes: int = 3  # a job that kills its worker this often is failed, not retried forever


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        if not config.models:
            raise LatentForgeError("the service needs at least one model", "pass --model SPEC")
        # refused before any socket exists, so an insecure service never listens even briefly
        check_bind(config.bind, config.keys_dir)
        if config.broker_bind is not None:
            check_bind(config.broker_bind, config.keys_dir)
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.broker = Broker(self, config.heartbeat_s)
        self.records: dict[str, JobRecord] = {}
        self.subscribers: dict[str, set[bytes]] = {}
        self.context = zmq.Context()
        self.curve: Curve | None = None
        self.sockets: list[zmq.Socket] = []
        self.local: LocalWorkers | None = None
        self._link_dir: str | None = None
        self.endpoint = self.broker_endpoint = ""

    # ------------------------------------------------------------------------------------------ lifecycle

    def _listen(self, kind: int, endpoint: str, secure: bool, max_bytes: int | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.ipv6 = "[" in endpoint or "::" in endpoint
        if max_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        if secure and self.curve is not None:
            self.curve.secure(sock)
        self.sockets.append(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise LatentForgeError(f"cannot listen on {endpoint}: {exc}",
                                   "is another service using that address? choose another port") from None
        return sock

    def start(self) -> None:
        if self.config.keys_dir is not None:
            self.curve = Curve(self.context, self.config.keys_dir)
        self.front = self._listen(zmq.ROUTER, self.config.bind, True, REQUEST_LIMITS.max_message_bytes)
        self.endpoint = self.front.last_endpoint.decode()
        # local workers talk over a private link: a folder only this user can open, or loopback on Windows
        if sys.platform != "win32":
            self._link_dir = tempfile.mkdtemp(prefix="latentforge-")
            link = f"ipc://{self._link_dir}/workers"
        else:
            link = "tcp://127.0.0.1:*"
        self.local_link = self._listen(zmq.ROUTER, link, False)
        self.remote_link = None
        if self.config.broker_bind is not None:
            self.remote_link = self._listen(zmq.ROUTER, self.config.broker_bind, True)
            self.broker_endpoint = self.remote_link.last_endpoint.decode()
        self._recover()
        if self.config.workers:
            self.local = LocalWorkers(self.local_link.last_endpoint.decode(), self.config.models,
                                      self.config.devices[: self.config.workers], self.config.heartbeat_s)
            self.local.start()

    def _recover(self) -> None:
        """Requeue what a previous run left queued or running; everything else is served as it is."""
        for record in self.store.load_all():
            self.records[record.id] = record
            if record.state in FINAL_STATES:
                continue
            if record.state == "running":
                record.crashes += 1  # the service died while the job ran
            self._requeue_or_end(record, "the service stopped while it ran", front=False)

    def serve(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        last_reload = time.monotonic()
        while not stop.is_set():
            ready = dict(poller.poll(100))
            for sock in ready:
                for _ in range(DRAIN):
                    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        break
                    if sock is self.front:
                        self._on_client()
                    else:
                        self._on_worker(sock)
            try:
                self._housekeeping()
            except Exception:  # e.g. a full disk while saving a state: log it, keep serving
                traceback.print_exc()
            if self.curve is not None and time.monotonic() - last_reload > 2.0:
                self.curve.reload()
                last_reload = time.monotonic()

    def _housekeeping(self) -> None:
        """Heartbeats and dead workers, restarts of local ones, then hand out queued jobs."""
        self.broker.tick()
        if self.local is not None:
            for pid in self.local.reap():
                self.broker.remove_pid(pid, self.local_link)
        self._dispatch()

    def close(self) -> None:
        """Stop workers and sockets; running jobs go back to queued (a clean stop is not a crash)."""
        if self.local is not None:
            self.local.stop()
        for record in self.records.values():
            if record.state == "running":
                record.state = "queued"
                self.store.save(record)
        if self.curve is not None:
            self.curve.stop()
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ clients

    def _on_client(self) -> None:
        parts = self.front.recv_multipart(copy=False)
        identity, frames = parts[0].bytes, [p.buffer for p in parts[1:]]
        owner = identity.hex()
        if frames:
            with contextlib.suppress(zmq.ZMQError):  # set when CURVE authenticated the peer
                owner = parts[1].get("User-Id") or owner
        request_id = None
        try:
            message = decode(frames, REQUEST_LIMITS, CLIENT_REQUESTS)
            request_id = message.id
            reply = getattr(self, f"_on_{message.type}")(identity, owner, message)
        except ProtocolError as exc:
            reply = encode("error", error_fields(exc.code, exc.message, request_id=exc.request_id))
        except UnknownJob as exc:
            reply = encode("error", error_fields("unknown_job", str(exc.args[0]), "list jobs to see their ids",
                                                 request_id=request_id))
        except LatentForgeError as exc:
            reply = encode("error", error_fields(exc.code, exc.message, exc.hint, request_id=request_id))
        except Exception as exc:  # a bug must not take the service down
            traceback.print_exc()
            reply = encode("error", error_fields("internal", f"{type(exc).__name__}: {exc}", request_id=request_id))
        self.front.send_multipart([identity, *reply], copy=False)

    @staticmethod
    def _reply(kind: str, request: Message, fields: dict[str, Any], arrays: dict | None = None,
               blobs: dict | None = None) -> Frames:
        if request.id is not None:
            fields = {"id": request.id, **fields}
        return encode(kind, fields, arrays, blobs)

    def _record(self, job: str) -> JobRecord:
        record = self.records.get(job)
        if record is None:
            raise UnknownJob(f"no job {job!r} on this service")
        return record

    def _summary(self, record: JobRecord) -> dict[str, Any]:
        return {**record.summary(), "position": self.broker.position(record.id)}

    def _on_hello(self, identity: bytes, owner: str, message: Message) -> Frames:
        return self._reply("welcome", message, {
            "server": "latentforge", "version": __version__, "protocol": VERSION, "tasks": tasks.available(),
            "methods": sorted(OBJECTIVES), "presets": sorted(PRESETS), "models": self.config.models,
            "queue": len(self.broker.queue), "workers": len(self.broker.workers),
            "limits": {"max_prompt_chars": MAX_PROMPT_CHARS, "max_faces": MAX_FACES, "max_vertices": MAX_VERTICES,
                       "max_message_bytes": REQUEST_LIMITS.max_message_bytes,
                       "max_queued_per_client": self.config.max_queued_per_client}})

    def _on_submit(self, identity: bytes, owner: str, message: Message) -> Frames:
        model = message.fields.get("model") or self.config.models[0]
        if model not in self.config.models:
            raise Refused("unknown_model", f"this service does not serve the model {model[:200]!r}",
                          f"use one of: {', '.join(self.config.models)}")
        queued = sum(1 for r in self.records.values() if r.owner == owner and r.state == "queued")
        if queued >= self.config.max_queued_per_client:
            raise Refused("queue_full", f"you already have {queued} queued jobs, the most this service allows",
                          "wait for one to start, or cancel one")
        spec = tasks.JobSpec.from_submit({**message.fields, "model": model}, message.arrays)
        tasks.check_spec(spec)
        record = self.store.create(spec.fields, spec.arrays, owner)
        self.records[record.id] = record
        self.broker.enqueue(record.id)
        if message.fields.get("watch", True):
            self.subscribers.setdefault(record.id, set()).add(identity)
        return self._reply("accepted", message, {"job": record.id, "position": self.broker.position(record.id)})

    def _on_status(self, identity: bytes, owner: str, message: Message) -> Frames:
        record = self._record(message.fields["job"])
        if message.fields.get("watch") and record.state not in FINAL_STATES:
            self.subscribers.setdefault(record.id, set()).add(identity)
        return self._reply("job", message, {"job": self._summary(record)})

    def _on_list(self, identity: bytes, owner: str, message: Message) -> Frames:
        state = message.fields.get("state")
        records = [r for r in self.records.values() if state is None or r.state == state]
        records = records[-message.fields.get("limit", 100):]
        return self._reply("jobs", message, {"jobs": [self._summary(r) for r in records]})

    def _on_cancel(self, identity: bytes, owner: str, message: Message) -> Frames:
        record = self._record(message.fields["job"])
        if record.state == "queued":
            self.broker.dequeue(record.id)
            self._end(record, "cancelled", "cancelled", "the job was cancelled before it started")
        elif record.state == "running":
            record.cancel_requested = True
            self.store.save(record)
            self.broker.cancel(record.id)
        return self._reply("job", message, {"job": self._summary(record)})

    def _on_fetch(self, identity: bytes, owner: str, message: Message) -> Frames:
        record = self._record(message.fields["job"])
        if record.state in ("failed", "cancelled"):
            error = record.error or {}
            raise Refused(error.get("code", "job_failed"), error.get("message", f"the job {record.state}"),
                          error.get("hint"))
        if record.state != "finished":
            raise Refused("not_finished", f"job {record.id} is {record.state}, it has no result yet",
                          "wait for its result message, or poll its status")
        arrays, texture, glb_path = self.store.load_result(record.id)
        blobs = {"texture": texture}
        if (normal_map := self.store.load_normal_map(record.id)) is not None:
            blobs["normal_map"] = normal_map
        if message.fields.get("glb"):
            blobs["glb"] = glb_path.read_bytes()
        return self._reply("result", message, {"job": record.id, "glb_path": str(glb_path),
                                               "stats": record.stats or {}}, arrays, blobs)

    def _on_heartbeat(self, identity: bytes, owner: str, message: Message) -> Frames:
        return self._reply("heartbeat", message, {"time": time.time(), "queue": len(self.broker.queue)})

    def _notify(self, job: str, frames: Frames, last: bool = False) -> None:
        for identity in self.subscribers.get(job, ()):
            self.front.send_multipart([identity, *frames], copy=False)  # dropped if that client has gone
        if last:
            self.subscribers.pop(job, None)

    # ------------------------------------------------------------------------------------------ jobs

    def _end(self, record: JobRecord, state: str, code: str | None = None, message: str = "",
             hint: str | None = None) -> None:
        record.state = state
        if code is not None:
            record.error = {"code": code, "message": message, "hint": hint}
            self._notify(record.id, encode("error", error_fields(code, message, hint, job=record.id)), last=True)
        self.store.save(record)

    def _requeue_or_end(self, record: JobRecord, why: str, front: bool = True) -> None:
        if record.cancel_requested:
            self._end(record, "cancelled", "cancelled", "the job was cancelled")
        elif record.crashes > self.config.max_crashes:
            self._end(record, "failed", "worker_lost", f"the job stopped its worker {record.crashes} times "
                      f"(last: {why})", "try a lower quality preset or a smaller input")
        else:
            record.state = "queued"
            self.store.save(record)
            # a job that was running was submitted before everything still queued
            self.broker.enqueue(record.id, front=front)

    def _dispatch(self) -> None:
        for job, worker in self.broker.match(lambda j: self.records[j].model):
            record = self.records[job]
            try:
                frames = self._task_frames(record)
            except (OSError, ValueError, KeyError) as exc:
                self.broker.release(worker)
                self._end(record, "failed", "job_failed", f"the job's files cannot be read ({exc})",
                          "submit the job again")
                continue
            record.state, record.worker, record.progress = "running", worker.name, None
            record.attempts += 1
            self.store.save(record)
            self.broker.send(worker, frames)

    def _task_frames(self, record: JobRecord) -> Frames:
        saved = self.store.load_checkpoint(record.id)
        skeleton, checkpoint = saved if saved is not None else (None, {})
        return encode("task", {"job": record.id, "spec": self.store.spec(record.id), "checkpoint": skeleton,
                               "attempt": record.attempts},
                      {**self.store.inputs(record.id), **checkpoint})

    # broker callbacks

    def _on_worker(self, sock: zmq.Socket) -> None:
        try:
            self.broker.receive(sock)
        except Exception:  # a bug, or a disk error while saving: log it and keep serving
            traceback.print_exc()

    def job_message(self, job: str, message: Message, worker: WorkerInfo) -> None:
        record = self.records[job]
        fields = message.fields
        if message.type == "progress":
            record.progress = {k: fields.get(k) for k in ("stage", "step", "total", "eta_s", "losses")}
            self._notify(job, encode("progress", fields, blobs=message.blobs))
        elif message.type == "checkpoint":
            self.store.save_checkpoint(job, fields["state"], message.arrays)
            record.checkpoint = checkpoint_wire.position(fields["state"])
            self.store.save(record)
        elif message.type == "result" and not {"texture", "glb"} <= set(message.blobs):
            self._end(record, "failed", "internal", f"worker {worker.name} sent a result without its files")
        elif message.type == "result":
            glb_path = self.store.save_result(job, message.arrays, message.blobs["texture"],
                                              message.blobs["glb"], message.blobs.get("normal_map"))
            record.stats = fields.get("stats") or {}
            self._end(record, "finished")
            images = {k: message.blobs[k] for k in ("texture", "normal_map") if k in message.blobs}
            self._notify(job, encode("result", {"job": job, "glb_path": str(glb_path), "stats": record.stats},
                                     message.arrays, images), last=True)
        elif fields["code"] == "busy":
            self.broker.enqueue(job, front=True)
            record.state = "queued"
            self.store.save(record)
        else:
            state = "cancelled" if fields["code"] == "cancelled" else "failed"
            self._end(record, state, fields["code"], fields["message"], fields.get("hint"))

    def job_lost(self, job: str, worker: WorkerInfo, why: str) -> None:
        record = self.records[job]
        record.crashes += 1
        self._requeue_or_end(record, why)

