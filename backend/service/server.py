"""The service: a ROUTER for clients, a job store on disk, and a pool of workers (local processes or Ray).

One thread owns every socket. Each client message is decoded and validated (protocol, then the task's
own settings) before anything is written or sent to a worker; a bad one gets an `error` reply and the
loop goes on. Jobs persist in the store, so a restarted service requeues what was queued or running
(resuming from the last checkpoint) and still serves every finished result.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from backend import __version__
from backend.errors import LatentForgeError
from backend.objectives import OBJECTIVES
from backend.presets import PRESETS
from backend.service import checkpoint_wire, models, ownership, schema, tasks
from backend.service.broker import Broker, WorkerPool
from backend.service.jobs import FINAL_STATES, JobRecord, JobStore, UnknownJob
from backend.service.protocol import (
    CLIENT_REQUESTS,
    MAX_FACES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_VERTICES,
    REQUEST_ID,
    REQUEST_LIMITS,
    VERSION,
    Frames,
    Message,
    ProtocolError,
    decode,
    encode,
    error_fields,
)
from backend.service.retention import Retention, RetentionPolicy
from backend.service.security import Curve, check_bind
from backend.service.supervisor import LocalWorkers

DRAIN = 100  # messages handled per socket per loop turn, so neither side starves the other
MAX_LISTENERS = 256  # clients that get status pushes: the most recently heard that asked in their hello
RELOAD_KEYS_S = 2.0  # how often the allow-list is re-read (and revoked keys are cut off)
MAX_SESSIONS = 4096  # client identities remembered for revocation, most recent first
SWEEP_S = 60.0  # how often the retention policy runs (also at start and whenever a job ends)


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
    ray: str | None = None  # run jobs on this Ray cluster ("auto", "local" or an address), not local workers
    ray_cpus: float = 1.0  # CPUs each Ray actor takes on a cluster without GPUs
    keys_dir: Path | None = None
    max_queued_per_client: int = 8
    heartbeat_s: float = 1.0
    max_crashes: int = 3  # a job that kills its worker this often is failed, not retried forever
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        if not config.models:
            raise LatentForgeError("the service needs at least one model", "pass --model SPEC")
        # refused before any socket exists, so an insecure service never listens even briefly
        check_bind(config.bind, config.keys_dir)
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.retention = Retention(self.store, config.retention)
        # models this machine surely cannot load: reported in welcome, and submits for them are refused
        self.unavailable: dict[str, str] = {m: why for m in config.models if (why := models.problem(m))}
        self.sessions: dict[bytes, str] = {}  # client identity → the owner it spoke for
        self.broker = self._pool(config)
        self.records: dict[str, JobRecord] = {}
        self.subscribers: dict[str, set[bytes]] = {}
        # clients whose hello asked for status pushes, most recently heard last; a ROUTER drops sends to
        # ones that have gone
        self.listeners: OrderedDict[bytes, None] = OrderedDict()
        self._pushed_status: dict[str, Any] | None = None
        self.context = zmq.Context()
        self.curve: Curve | None = None
        self.sockets: list[zmq.Socket] = []
        self.local: LocalWorkers | None = None
        self._link_dir: str | None = None
        self.endpoint = ""

    def _pool(self, config: ServiceConfig) -> WorkerPool:
        """Where jobs run: the service's own worker processes, or actors on a Ray cluster."""
        if config.ray is None:
            return Broker(self, config.heartbeat_s)
        from backend.service.ray_runner import RayWorkers

        return RayWorkers(self, config.ray, config.models, config.workers, config.devices[0], config.ray_cpus)

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
        self.broker.start()  # e.g. joins the Ray cluster, before anything listens: a wrong address ends here
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
        self._recover()
        self._sweep()
        for model, why in self.unavailable.items():
            print(f"service: cannot serve the model {model}: {why}", file=sys.stderr, flush=True)
        usable = [m for m in self.config.models if m not in self.unavailable]
        if self.config.workers and self.config.ray is None and usable:
            self.local = LocalWorkers(self.local_link.last_endpoint.decode(), usable,
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
        last_reload = last_sweep = time.monotonic()
        while not stop.is_set():
            ready = dict(poller.poll(self.broker.poll_ms))
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
            if self.curve is not None and time.monotonic() - last_reload > RELOAD_KEYS_S:
                self._reload_keys()
                last_reload = time.monotonic()
            if time.monotonic() - last_sweep > SWEEP_S:
                self._sweep()
                last_sweep = time.monotonic()

    def _reload_keys(self) -> None:
        """Re-read the allow-list; a revoked key's sessions end: no replies, no more job events."""
        try:
            revoked = self.curve.reload()
        except Exception:  # never let the allow-list's folder take the service down
            traceback.print_exc()
            return
        if not revoked:
            return
        gone = {identity for identity, owner in self.sessions.items() if owner in revoked}
        for identity in gone:
            del self.sessions[identity]
        for watchers in self.subscribers.values():
            watchers -= gone
        print(f"service: {len(revoked)} client key(s) left the allow-list; closed {len(gone)} session(s)",
              file=sys.stderr, flush=True)

    def _sweep(self) -> None:
        try:
            removed = self.retention.sweep(self.records)
        except Exception:  # e.g. a folder that cannot be deleted: try again next time
            traceback.print_exc()
            return
        if removed:
            print(f"service: the retention policy removed {len(removed)} old job(s)", file=sys.stderr, flush=True)

    def _housekeeping(self) -> None:
        """Heartbeats and dead workers, restarts of local ones, then hand out queued jobs."""
        self.broker.tick()
        if self.local is not None:
            for pid in self.local.reap():
                self.broker.remove_pid(pid, self.local_link)
        if (self.local is not None and self.local.given_up() and self.remote_link is None
                and len(self.unavailable) < len(self.config.models)):
            self._workers_failed()
        self._dispatch()
        self._push_status()

    def _workers_failed(self) -> None:
        """No worker can start (e.g. the weights load nowhere): say so instead of queueing forever."""
        why = "the service's workers exit right after starting (see the service's log for why)"
        self.unavailable.update({m: why for m in self.config.models})
        for record in list(self.records.values()):
            if record.state == "queued":
                self.broker.dequeue(record.id)
                self._end(record, "failed", "model_not_found", f"model {record.model}: {why}", models.HINT)

    def close(self) -> None:
        """Stop workers and sockets; running jobs go back to queued (a clean stop is not a crash)."""
        if self.local is not None:
            self.local.stop()
        self.broker.close()
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
        identity = parts[0].bytes
        try:
            reply = self._answer(identity, parts)
        except Exception:  # the last resort: even the error reply failed; log it, answer, keep serving
            traceback.print_exc()
            reply = encode("error", error_fields("internal", "the service could not answer this request",
                                                 "see the service's log", request_id=_request_id(parts)))
        if reply is not None:
            self.front.send_multipart([identity, *reply], copy=False)

    def _answer(self, identity: bytes, parts: list[zmq.Frame]) -> Frames | None:
        """The reply to one client message (None: drop it, the sender's key is no longer allowed)."""
        owner = ownership.caller(parts[1] if len(parts) > 1 else None, self.curve is not None,
                                 self.curve.allowed_keys if self.curve is not None else frozenset())
        if owner is None:
            return None
        if self.curve is not None:  # remembered so that revoking the key can end this session
            self.sessions.pop(identity, None)
            self.sessions[identity] = owner
            if len(self.sessions) > MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]
        request_id = None
        if identity in self.listeners:
            self.listeners.move_to_end(identity)
        try:
            message = decode([p.buffer for p in parts[1:]], REQUEST_LIMITS, CLIENT_REQUESTS)
            request_id = message.id
            return getattr(self, f"_on_{message.type}")(identity, owner, message)
        except ProtocolError as exc:
            return encode("error", error_fields(exc.code, exc.message, request_id=exc.request_id))
        except UnknownJob as exc:
            return encode("error", error_fields("unknown_job", str(exc.args[0]), "list jobs to see their ids",
                                                request_id=request_id))
        except LatentForgeError as exc:
            return encode("error", error_fields(exc.code, exc.message, exc.hint, request_id=request_id))
        except Exception as exc:  # a bug must not take the service down
            traceback.print_exc()
            return encode("error", error_fields("internal", f"{type(exc).__name__}: {exc}", "see the service's log",
                                                request_id=request_id))

    @staticmethod
    def _reply(kind: str, request: Message, fields: dict[str, Any], arrays: dict | None = None,
               blobs: dict | None = None) -> Frames:
        if request.id is not None:
            fields = {"id": request.id, **fields}
        return encode(kind, fields, arrays, blobs)

    def _record(self, job: str, owner: str) -> JobRecord:
        record = self.records.get(job)
        # another client's job is as unknown as one that never existed
        if record is None or not ownership.owns(owner, record.owner, self.curve is not None):
            raise UnknownJob(f"no job {job!r} of yours on this service")
        return record

    def _summary(self, record: JobRecord) -> dict[str, Any]:
        return {**record.summary(), "position": self.broker.position(record.id)}

    def _on_hello(self, identity: bytes, owner: str, message: Message) -> Frames:
        if message.fields.get("watch"):
            self.listeners[identity] = None
            self.listeners.move_to_end(identity)
            while len(self.listeners) > MAX_LISTENERS:
                self.listeners.popitem(last=False)
        usable = len(self.unavailable) < len(self.config.models)
        return self._reply("welcome", message, {
            "server": "latentforge", "version": __version__, "protocol": VERSION,
            "tasks": tasks.available() if usable else [],
            "methods": sorted(OBJECTIVES), "presets": sorted(PRESETS), "models": self.config.models,
            "unavailable": {m: f"{why}; {models.HINT}" for m, why in self.unavailable.items()},
            "queue": len(self.broker.queue), "workers": len(self.broker.workers),
            "limits": self._limits()})

    def _limits(self) -> dict[str, Any]:
        return {"max_prompt_chars": MAX_PROMPT_CHARS, "max_faces": MAX_FACES, "max_vertices": MAX_VERTICES,
                "max_message_bytes": REQUEST_LIMITS.max_message_bytes, "max_seed": MAX_SEED,
                "max_queued_per_client": self.config.max_queued_per_client,
                "ceilings": schema.ceilings(*tasks.config_types()),
                "keep_days": self.config.retention.max_age_days, "disk_budget_gb": self.config.retention.max_disk_gb}

    def _on_submit(self, identity: bytes, owner: str, message: Message) -> Frames:
        model = message.fields.get("model") or self.config.models[0]
        if model not in self.config.models:
            raise Refused("unknown_model", f"this service does not serve the model {model[:200]!r}",
                          f"use one of: {', '.join(self.config.models)}")
        if model in self.unavailable:
            raise Refused("model_not_found", f"this service cannot load the model {model}: "
                          f"{self.unavailable[model]}", models.HINT)
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
        record = self._record(message.fields["job"], owner)
        if message.fields.get("watch") and record.state not in FINAL_STATES:
            self.subscribers.setdefault(record.id, set()).add(identity)
        return self._reply("job", message, {"job": self._summary(record)})

    def _on_list(self, identity: bytes, owner: str, message: Message) -> Frames:
        state = message.fields.get("state")
        keys_on = self.curve is not None
        records = [r for r in self.records.values() if (state is None or r.state == state)
                   and ownership.owns(owner, r.owner, keys_on)]
        records = records[-message.fields.get("limit", 100):]
        return self._reply("jobs", message, {"jobs": [self._summary(r) for r in records]})

    def _on_cancel(self, identity: bytes, owner: str, message: Message) -> Frames:
        record = self._record(message.fields["job"], owner)
        if record.state == "queued":
            self.broker.dequeue(record.id)
            self._end(record, "cancelled", "cancelled", "the job was cancelled before it started")
        elif record.state == "running":
            record.cancel_requested = True
            self.store.save(record)
            self.broker.cancel(record.id)
        return self._reply("job", message, {"job": self._summary(record)})

    def _on_fetch(self, identity: bytes, owner: str, message: Message) -> Frames:
        record = self._record(message.fields["job"], owner)
        if record.state in ("failed", "cancelled"):
            error = record.error or {}
            raise Refused(error.get("code", "job_failed"), error.get("message", f"the job {record.state}"),
                          error.get("hint"))
        if record.state != "finished":
            raise Refused("not_finished", f"job {record.id} is {record.state}, it has no result yet",
                          "wait for its result message, or poll its status")
        try:
            arrays, texture, glb_path = self.store.load_result(record.id)
            blobs = {"texture": texture}
            if (normal_map := self.store.load_normal_map(record.id)) is not None:
                blobs["normal_map"] = normal_map
            blobs.update(self.store.load_tiles(record.id))
            if message.fields.get("glb"):
                blobs["glb"] = glb_path.read_bytes()
        except Exception as exc:  # a damaged or deleted result folder: that job's problem, not the service's
            raise Refused("job_failed", f"the result files of job {record.id} cannot be read ({exc})"[:500],
                          "submit the job again") from None
        return self._reply("result", message, {"job": record.id, "glb_path": str(glb_path),
                                               "stats": record.stats or {}}, arrays, blobs)

    def _on_heartbeat(self, identity: bytes, owner: str, message: Message) -> Frames:
        return self._reply("heartbeat", message, {"time": time.time(), **self._status()})

    def _status(self) -> dict[str, Any]:
        """What a client's server panel shows; heartbeats carry it."""
        return {"queue": len(self.broker.queue), "workers": len(self.broker.workers), "models": self.config.models}

    def _push_status(self) -> None:
        """A heartbeat (no id) to every client that asked for it, as soon as workers, queue or models change."""
        status = self._status()
        if status == self._pushed_status:
            return
        self._pushed_status = status
        frames = encode("heartbeat", {"time": time.time(), **status})
        for identity in self.listeners:
            self.front.send_multipart([identity, *frames], copy=False)

    def _on_reexport(self, identity: bytes, owner: str, message: Message) -> Frames:
        """Export a failed job's trained field again with other export settings, without training again:
        the job is queued once more with its spec's export settings changed, and resumes from the checkpoint
        saved at the end of its optimisation."""
        record = self._record(message.fields["job"], owner)
        if record.state != "failed":
            raise Refused("not_reexportable", f"job {record.id} is {record.state}: only a job whose export failed "
                          "can be exported again", "wait for it to end, or submit a new job")
        if not self.store.has_checkpoint(record.id):
            raise Refused("not_reexportable", f"job {record.id} kept no checkpoint of its trained field",
                          "submit the job again")
        spec = tasks.reexport_spec(self.store.spec(record.id), message.fields["export"], record.checkpoint)
        self.store.save_spec(record.id, spec)
        record.state, record.error, record.progress, record.cancel_requested = "queued", None, None, False
        self.store.save(record)
        self.broker.enqueue(record.id)
        if message.fields.get("watch", True):
            self.subscribers.setdefault(record.id, set()).add(identity)
        return self._reply("job", message, {"job": self._summary(record)})

    def _reexport_offer(self, record: JobRecord, details: dict | None) -> dict | None:
        """An error's details, with `reexport`: whether a reexport could reuse the job's trained field."""
        if details is None:
            return None
        try:
            tasks.reexport_spec(self.store.spec(record.id), {}, record.checkpoint)
            possible = self.store.has_checkpoint(record.id)
        except (LatentForgeError, OSError, ValueError):
            possible = False
        return {**details, "reexport": possible}

    def _notify(self, job: str, frames: Frames, last: bool = False) -> None:
        for identity in list(self.subscribers.get(job, ())):
            self.front.send_multipart([identity, *frames], copy=False)  # dropped if that client has gone
        if last:
            self.subscribers.pop(job, None)

    # ------------------------------------------------------------------------------------------ jobs

    def _end(self, record: JobRecord, state: str, code: str | None = None, message: str = "",
             hint: str | None = None, details: dict | None = None) -> None:
        record.state = state
        if code is not None:
            record.error = {"code": code, "message": message, "hint": hint, **({"details": details} if details else {})}
            self._notify(record.id, encode("error", error_fields(code, message, hint, job=record.id,
                                                                 details=details)), last=True)
        self.store.save(record)
        # it never runs again, so what it was given goes now; except a trained field whose export can be redone
        # with other settings (its inputs and checkpoint then age out with the job)
        if state in ("failed", "cancelled") and not (details or {}).get("reexport"):
            self.store.drop_inputs(record.id)
        self._sweep()

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
            except Exception as exc:  # missing, truncated or tampered files: fail this job, serve the rest
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

    def job_message(self, job: str, message: Message, worker: Any) -> None:
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
            tiles = {k: v for k, v in message.blobs.items() if k.startswith("tile.")}
            glb_path = self.store.save_result(job, message.arrays, message.blobs["texture"],
                                              message.blobs["glb"], message.blobs.get("normal_map"), tiles)
            record.stats = fields.get("stats") or {}
            self._end(record, "finished")
            images = {k: message.blobs[k] for k in ("texture", "normal_map") if k in message.blobs} | tiles
            self._notify(job, encode("result", {"job": job, "glb_path": str(glb_path), "stats": record.stats},
                                     message.arrays, images), last=True)
        elif fields["code"] == "busy":
            self.broker.enqueue(job, front=True)
            record.state = "queued"
            self.store.save(record)
        else:
            state = "cancelled" if fields["code"] == "cancelled" else "failed"
            self._end(record, state, fields["code"], fields["message"], fields.get("hint"),
                      self._reexport_offer(record, fields.get("details")))

    def job_lost(self, job: str, worker: Any, why: str) -> None:
        record = self.records[job]
        record.crashes += 1
        self._requeue_or_end(record, why)


def _request_id(parts: list[zmq.Frame]) -> str | None:
    """The request's id when its header still yields a well-formed one, so the error reaches its caller."""
    try:
        rid = json.loads(parts[1].bytes).get("id")
    except Exception:
        return None
    return rid if isinstance(rid, str) and REQUEST_ID.fullmatch(rid) else None
