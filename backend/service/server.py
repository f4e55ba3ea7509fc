"""The service: a ROUTER for clients, a job store on disk, and a pool of workers (local processes or Ray).

This module owns the sockets and the loop; `requests` answers clients, `board` follows jobs.

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

import zmq

from backend.errors import LatentForgeError
from backend.service import models, ownership
from backend.service.board import JobBoard
from backend.service.broker import Broker, WorkerPool
from backend.service.config import ServiceConfig
from backend.service.jobs import JobStore, UnknownJob
from backend.service.protocol import (
    CLIENT_REQUESTS,
    REQUEST_ID,
    REQUEST_LIMITS,
    Frames,
    ProtocolError,
    decode,
    encode,
    error_fields,
)
from backend.service.requests import Requests
from backend.service.retention import Retention
from backend.service.security import Curve, check_bind
from backend.service.supervisor import LocalWorkers

DRAIN = 100  # messages handled per socket per loop turn, so neither side starves the other
RELOAD_KEYS_S = 2.0  # how often the allow-list is re-read (and revoked keys are cut off)
MAX_SESSIONS = 4096  # client identities remembered for revocation, most recent first
SWEEP_S = 60.0  # how often the retention policy runs (also at start and whenever a job ends)


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
        self.board = JobBoard(self.store, self._send, config.max_crashes, self._sweep)
        self.broker = self._pool(config)
        self.board.pool = self.broker
        self.requests = Requests(config, self.board, self.unavailable, lambda: self.curve is not None)
        self._pushed_status: dict | None = None
        self.context = zmq.Context()
        self.curve: Curve | None = None
        self.sockets: list[zmq.Socket] = []
        self.local: LocalWorkers | None = None
        self._link_dir: str | None = None
        self.endpoint = ""

    @property
    def records(self) -> dict:
        return self.board.records

    def _pool(self, config: ServiceConfig) -> WorkerPool:
        """Where jobs run: the service's own worker processes, or actors on a Ray cluster."""
        if config.ray is None:
            return Broker(self.board, config.heartbeat_s)
        from backend.service.ray_runner import RayWorkers

        return RayWorkers(self.board, config.ray, config.models, config.workers, config.devices[0], config.ray_cpus,
                          config.hang_s)

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
        self.board.recover()
        self._sweep()
        for model, why in self.unavailable.items():
            print(f"service: cannot serve the model {model}: {why}", file=sys.stderr, flush=True)
        usable = [m for m in self.config.models if m not in self.unavailable]
        if self.config.workers and self.config.ray is None and usable:
            self.local = LocalWorkers(self.local_link.last_endpoint.decode(), usable,
                                      self.config.devices[: self.config.workers], self.config.heartbeat_s,
                                      self.config.hang_s)
            self.local.start()

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
        self.board.forget_watchers(gone)
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
        if (self.local is not None and self.local.given_up()
                and len(self.unavailable) < len(self.config.models)):
            self._workers_failed()
        self.board.dispatch()
        self._push_status()

    def _workers_failed(self) -> None:
        """No worker can start (e.g. the weights load nowhere): say so instead of queueing forever."""
        why = "the service's workers exit right after starting (see the service's log for why)"
        self.unavailable.update({m: why for m in self.config.models})
        for record in list(self.records.values()):
            if record.state == "queued":
                self.broker.dequeue(record.id)
                self.board.end(record, "failed", "model_not_found", f"model {record.model}: {why}", models.HINT)

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
        self.requests.heard(identity)
        try:
            message = decode([p.buffer for p in parts[1:]], REQUEST_LIMITS, CLIENT_REQUESTS)
            request_id = message.id
            return getattr(self.requests, f"on_{message.type}")(identity, owner, message)
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

    def _send(self, identity: bytes, frames: Frames) -> None:
        self.front.send_multipart([identity, *frames], copy=False)  # dropped if that client has gone

    def _push_status(self) -> None:
        """A heartbeat (no id) to every client that asked for it, as soon as workers, queue or models change."""
        status = self.requests.status()
        if status == self._pushed_status:
            return
        self._pushed_status = status
        frames = encode("heartbeat", {"time": time.time(), **status})
        for identity in self.requests.listeners:
            self._send(identity, frames)

    # ------------------------------------------------------------------------------------------ workers

    def _on_worker(self, sock: zmq.Socket) -> None:
        try:
            self.broker.receive(sock)
        except Exception:  # a bug, or a disk error while saving: log it and keep serving
            traceback.print_exc()


def _request_id(parts: list[zmq.Frame]) -> str | None:
    """The request's id when its header still yields a well-formed one, so the error reaches its caller."""
    try:
        rid = json.loads(parts[1].bytes).get("id")
    except Exception:
        return None
    return rid if isinstance(rid, str) and REQUEST_ID.fullmatch(rid) else None
