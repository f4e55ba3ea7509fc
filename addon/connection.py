"""The add-on's link to the service: one background thread owns the ZeroMQ client (sockets are not
thread-safe), takes commands from a queue and puts events on another. Never touches bpy, so it is safe
off the main thread; `runtime.py` moves its events into the scene on the main thread.

Events are plain dicts, `{"type": ..., ...}`:
- connected {info}, disconnected {message}, heartbeat {queue, workers, models}: the service pushes one
  whenever its status changes, and answers ours
- accepted {request, job, variants?}, job {job: summary}: a submit's id (a group's, with each variant's
  {job, seed}), a status, cancel or finish's answer
- progress {job, stage, step, total, eta_s, losses, blobs: {preview?}}
- result {job, arrays: {vertices, faces, uvs}, blobs: {texture, glb?}, glb_path, stats, tiles: {UDIM tile: PNG}}
- error {job?, request?, code, message, hint, details?}
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..backend.service.client import Client, CurveKeys, JobResult, ServiceError, ServiceTimeout

Event = dict[str, Any]
FINAL_STATES = ("finished", "failed", "cancelled")


@dataclass(frozen=True)
class Settings:
    address: str
    timeout_s: float = 10.0
    curve: tuple[str, str] | None = None  # key files: the server's server.key, this client's NAME.key_secret

    def client(self, context: zmq.Context) -> Client:
        keys = CurveKeys.load(*self.curve) if self.curve else None
        return Client(self.address, self.timeout_s, keys, context=context)


def result_event(result: JobResult) -> Event:
    arrays = {"vertices": result.vertices, "faces": result.faces} | result.level_arrays
    if result.uvs is not None:
        arrays["uvs"] = result.uvs
    blobs = {"texture": result.texture_png} | ({"glb": result.glb} if result.glb is not None else {})
    if result.normal_png is not None:
        blobs["normal_map"] = result.normal_png
    blobs |= result.level_blobs
    return {"type": "result", "job": result.job, "arrays": arrays, "blobs": blobs, "glb_path": result.glb_path,
            "stats": result.stats, "tiles": result.tiles}


def error_event(exc: ServiceError, **where: Any) -> Event:
    return {"type": "error", "code": exc.code, "message": exc.message, "hint": exc.hint, "details": exc.details,
            **({"job": exc.job} if exc.job else {}), **where}


class Connection:
    """Commands in (`submit`, `cancel`, `fetch`, `reexport`, `finish`), events out (`drain`)."""

    def __init__(self, settings: Settings, poll_s: float = 0.1, heartbeat_s: float = 5.0, quiet_s: float = 5.0,
                 retry_s: float = 2.0) -> None:
        self.settings = settings
        self.poll_s, self.heartbeat_s, self.quiet_s, self.retry_s = poll_s, heartbeat_s, quiet_s, retry_s
        self._commands: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._events: queue.Queue[Event] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Our own context: terminating it is ZeroMQ's way to interrupt a request blocked in the thread.
        self._context = zmq.Context()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._following: dict[str, float] = {}  # job id → when its last event came
        self._last_contact = 0.0
        self._last_problem: str | None = None

    # -- main thread side ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="latentforge-connection", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread now, even in the middle of a request (term() makes its socket calls fail)."""
        self._stop.set()
        self._wake.set()
        # term() returns once the thread has closed its socket, so it runs beside the join
        threading.Thread(target=self._context.term, name="latentforge-term", daemon=True).start()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def submit(self, request: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._send("submit", request=request, fields=fields, arrays=arrays)

    def cancel(self, job: str) -> None:
        self._send("cancel", job=job)

    def fetch(self, job: str) -> None:
        """Ask for a job's state and follow it: its result comes when it has one (now, if it is finished)."""
        self._send("follow", job=job)

    def reexport(self, job: str, export: dict[str, Any]) -> None:
        """Export a failed job's trained field again with these export settings, and follow it."""
        self._send("reexport", job=job, export=export)

    def finish(self, job: str, cancel_others: bool) -> None:
        """Finish a variant's draft (its job's whole schedule), and follow it."""
        self._send("finish", job=job, cancel_others=cancel_others)

    def drain(self, limit: int = 1000) -> list[Event]:
        out = []
        while len(out) < limit:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

    def _send(self, op: str, **kwargs: Any) -> None:
        self._commands.put((op, kwargs))
        self._wake.set()

    # -- thread side -----------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._client is None and not self._connect():
                self._wake.wait(self.retry_s)
                self._wake.clear()
                self._fail_queued_commands()
                continue
            try:
                self._handle_commands()
                self._pump()
                self._keep_alive()
            except ServiceTimeout as exc:
                self._lost(str(exc))
            except Exception as exc:  # a bug here must not kill the thread silently
                self._lost(f"connection error: {exc!r}")
        self._close()

    def _connect(self) -> bool:
        try:
            self._client = self.settings.client(self._context)
            info = self._client.hello(watch=True)  # the server panel stays live: status pushes
        except ServiceError as exc:  # a timeout, or e.g. keys the server refuses
            self._close()
            self._report_problem(f"cannot reach the server at {self.settings.address}: {exc}")
            return False
        except Exception as exc:  # zmq errors: a malformed endpoint, a key of the wrong length
            self._close()
            self._report_problem(f"cannot connect to {self.settings.address}: {exc}")
            return False
        self._last_problem = None
        self._last_contact = time.monotonic()
        self._emit({"type": "connected", "info": info})
        for job in list(self._following):  # catch up on what happened while we were away
            self._follow(job)
        return True

    def _report_problem(self, message: str) -> None:
        if message != self._last_problem:  # once per change, not once per retry
            self._last_problem = message
            self._emit({"type": "disconnected", "message": message})

    def _lost(self, message: str) -> None:
        self._close()
        self._report_problem(message)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _fail_queued_commands(self) -> None:
        """While disconnected, submits and cancels fail at once (the user sees why) instead of waiting
        unseen; a job to follow is remembered and checked once the server is back."""
        while True:
            try:
                op, kwargs = self._commands.get_nowait()
            except queue.Empty:
                return
            if op == "follow":
                self._following.setdefault(kwargs["job"], 0.0)
            elif op in ("submit", "cancel", "reexport", "finish"):
                where = {k: v for k, v in kwargs.items() if k in ("job", "request")}
                self._emit({"type": "error", "code": "not_connected", **where,
                            "message": self._last_problem or f"not connected to {self.settings.address}"})

    def _handle_commands(self) -> None:
        while True:
            try:
                op, kwargs = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                getattr(self, f"_do_{op}")(**kwargs)
            except ServiceTimeout:
                raise
            except ServiceError as exc:
                self._emit(error_event(exc, **{k: v for k, v in kwargs.items() if k in ("job", "request")}))

    def _do_submit(self, request: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        try:
            if "variants" in fields:  # a group: its variants are followed one by one
                rest = {k: v for k, v in fields.items() if k != "variants"}
                group = self._client.submit_variants(fields["variants"], **rest, **arrays, watch=True)
                accepted = {"job": group.group, "variants": [{"job": j, "seed": seed} for j, seed in group.jobs]}
                followed = [j for j, _ in group.jobs]
            else:
                job = self._client.submit(**fields, **arrays, watch=True)
                accepted, followed = {"job": job}, [job]
        except ServiceTimeout as exc:
            self._emit({"type": "error", "request": request, "code": "timeout", "message": str(exc)})
            raise
        for job in followed:
            self._following[job] = time.monotonic()
        self._emit({"type": "accepted", "request": request, **accepted})

    def _do_cancel(self, job: str) -> None:
        self._emit({"type": "job", "job": self._client.cancel(job)})

    def _do_reexport(self, job: str, export: dict[str, Any]) -> None:
        summary = self._client.reexport(job, export, watch=True)
        self._following[job] = time.monotonic()
        self._emit({"type": "job", "job": summary})

    def _do_finish(self, job: str, cancel_others: bool) -> None:
        summary = self._client.finish(job, cancel_others=cancel_others, watch=True)
        self._following[job] = time.monotonic()
        self._emit({"type": "job", "job": summary})

    def _do_follow(self, job: str) -> None:
        self._following[job] = time.monotonic()
        self._follow(job)

    def _follow(self, job: str) -> None:
        """Ask for the job's state (re-subscribing to its events); fetch it once it is finished."""
        try:
            summary = self._client.status(job, watch=True)
        except ServiceTimeout:
            raise
        except ServiceError as exc:
            self._following.pop(job, None)
            self._emit(error_event(exc, job=job))
            return
        self._following[job] = time.monotonic()
        self._emit({"type": "job", "job": summary})
        state = summary.get("state")
        if "variants" in summary:  # a group has no result of its own: its variants that go on are followed
            self._following.pop(job, None)
            for variant in summary["variants"]:
                if variant.get("state") not in FINAL_STATES:
                    self._following.setdefault(variant["job"], time.monotonic())
        elif state == "finished":
            self._following.pop(job, None)
            self._emit(result_event(self._client.fetch(job)))
        elif state in FINAL_STATES:
            self._following.pop(job, None)
            error = summary.get("error") or {}
            self._emit({"type": "error", "job": job, "code": error.get("code", state),
                        "message": error.get("message") or f"the job was {state}", "hint": error.get("hint"),
                        "details": error.get("details") or {}})

    def _pump(self) -> None:
        if self._client is None:
            return
        message = self._client.poll(self.poll_s)
        while message is not None:
            self._last_contact = time.monotonic()
            if message.type == "result":  # the same event as a fetched result's
                event: Event = result_event(JobResult.from_message(message))
            else:
                event = {"type": message.type, **message.fields}
                if message.arrays:
                    event["arrays"] = dict(message.arrays)
                if message.blobs:
                    event["blobs"] = dict(message.blobs)
            job = event.get("job")
            if isinstance(job, str) and job in self._following:
                if message.type in ("result", "error"):
                    del self._following[job]
                else:
                    self._following[job] = time.monotonic()
            self._emit(event)
            message = self._client.poll(0)

    def _keep_alive(self) -> None:
        """Heartbeats when nothing else proves the server is there, each answered within `heartbeat_s` or the
        server counts as lost: a server that dies is noticed within two heartbeat intervals, however long the
        timeout for other requests. Then a status check for quiet jobs (the server is known to be there)."""
        if self._client is None:
            return
        now = time.monotonic()
        if now - self._last_contact >= self.heartbeat_s:
            beat = self._client.heartbeat(timeout_s=self.heartbeat_s)
            self._last_contact = time.monotonic()
            self._emit({"type": "heartbeat", **beat})
        for job, seen in list(self._following.items()):
            if now - seen >= self.quiet_s:
                self._follow(job)
