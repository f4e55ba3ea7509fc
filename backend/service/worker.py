"""A worker: the process the service starts on each device. It holds the link to the service and runs the jobs
in a job process of its own (`backend.service.job_process`), which it starts and watches.

Liveness never depends on the job's own thread. The worker runs no job code, so its loop answers the
service's heartbeats every interval whatever the job does: the service's short bound (`LIVENESS` intervals
of silence) only catches a worker that died or froze. The job process is watched by the worker: its exit
is seen at once, and it counts as hung when it has sent nothing, not even a heartbeat, for `hang_s`
(default `HANG_S`, ten minutes) while it runs a job, a bound far above any single call a job makes (a UV
unwrap of a large mesh takes under a minute). A dead or hung job process is ended and its worker exits:
the service requeues the job, which resumes from its last checkpoint, and starts a new worker. A Ray actor
(`backend.service.ray_runner`) watches its job process the same way through `JobProcess`.

Started as `python -m backend.service.worker --connect LINK --parent PID --model SPEC --device DEV`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

import backend
from backend.service.protocol import (
    BROKER_TO_WORKER,
    LIVENESS,
    TRUSTED_LIMITS,
    Frames,
    ProtocolError,
    decode,
    encode,
)

HANG_S = 600.0  # a job process silent this long while it runs a job is hung
# The service may pause for a few seconds while it saves a large checkpoint, so a worker waits longer
# than the service does before it gives up on the other side (and abandons its job).
PATIENCE = 3 * LIVENESS


class JobProcessGone(Exception):
    """The job process exited before it loaded its models (its messages say why)."""


def package_env() -> dict[str, str]:
    """This environment, with the `backend` package this process runs importable in a child interpreter."""
    env = dict(os.environ)
    root = str(Path(backend.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class JobProcess:
    """The worker's side of its job process: start it, send it tasks and cancels, take its messages, and say
    when it has died or hung. Not thread-safe: one thread at a time uses it."""

    def __init__(self, models: list[str], device: str, name: str, heartbeat_s: float = 1.0,
                 hang_s: float = HANG_S) -> None:
        self.models, self.device, self.name = models, device, name
        self.heartbeat_s, self.hang_s = heartbeat_s, hang_s
        self.process: subprocess.Popen | None = None
        self.sock: zmq.Socket | None = None
        self.job: str | None = None  # the job it runs: sent as a task, no result or error back yet
        self.last_heard = 0.0
        self._link_dir: str | None = None

    def start(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        if sys.platform == "win32":
            self.sock.bind("tcp://127.0.0.1:*")
        else:  # a folder only this user can open
            self._link_dir = tempfile.mkdtemp(prefix="latentforge-job-")
            self.sock.bind(f"ipc://{self._link_dir}/link")
        command = [sys.executable, "-m", "backend.service.job_process", "--connect",
                   self.sock.last_endpoint.decode(), "--parent", str(os.getpid()), "--name", self.name,
                   "--device", self.device, "--heartbeat-s", str(self.heartbeat_s)]
        for model in self.models:
            command += ["--model", model]
        self.process = subprocess.Popen(command, env=package_env(), stdin=subprocess.DEVNULL)
        self.job = None

    def wait_ready(self, give_up: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Its `ready` header, once its models are loaded (which may take minutes: no bound); raises
        `JobProcessGone` if it exits first, and returns an empty dict when `give_up()` turns true."""
        while not give_up():
            for header, _ in self.receive(100):
                if header.get("type") == "ready":
                    return header
            if (code := self.process.poll()) is not None:
                raise JobProcessGone(f"the job process exited with code {code} before its models were loaded")
        return {}

    def send_task(self, frames: Frames, job: str) -> None:
        if self.job is None:  # else it answers `busy`, and the job it runs is still the one watched
            self.job, self.last_heard = job, time.monotonic()
        self.sock.send_multipart(frames, copy=False)

    def send(self, frames: Frames) -> None:
        self.sock.send_multipart(frames, copy=False)

    def receive(self, timeout_ms: int) -> list[tuple[dict[str, Any], list[zmq.Frame]]]:
        """Its messages waiting now (after at most `timeout_ms` for the first), heartbeats left out, each as
        (header, frames). Its own messages are trusted: only the header is read, the frames go on as they are."""
        out = []
        if not self.sock.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            self.last_heard = time.monotonic()
            header = json.loads(frames[0].bytes)
            if header.get("type") in ("result", "error") and header.get("job") == self.job:
                self.job = None
            if header.get("type") != "heartbeat":
                out.append((header, frames))

    def problem(self) -> str | None:
        """Why the job process can no longer run jobs (it exited, or hung on a job), or None."""
        if (code := self.process.poll()) is not None:
            return f"its job process exited (code {code})"
        silent = time.monotonic() - self.last_heard
        if self.job is not None and silent > self.hang_s:
            return f"its job process has sent nothing for {silent:.0f} s while running job {self.job}: it hung"
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the job process (at once when it hung or `timeout_s` is 0) and close the link."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate() if timeout_s > 0 else self.process.kill()
            try:
                self.process.wait(timeout_s if timeout_s > 0 else None)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None


class Worker:
    """The link to the service: `ready`, tasks and cancels in, the job process's messages out, heartbeats."""

    def __init__(self, endpoint: str, process: JobProcess, parent_pid: int, heartbeat_s: float = 1.0) -> None:
        self.endpoint, self.process, self.parent_pid, self.heartbeat_s = endpoint, process, parent_pid, heartbeat_s
        self.name = process.name
        self.sock: zmq.Socket | None = None
        self.last_heard = self.last_sent = 0.0

    def _send(self, frames: Frames | list[zmq.Frame]) -> None:
        self.sock.send_multipart(frames, copy=False)
        self.last_sent = time.monotonic()

    def _from_service(self) -> None:
        frames = self.sock.recv_multipart(copy=False)
        self.last_heard = time.monotonic()
        try:
            message = decode([f.buffer for f in frames], TRUSTED_LIMITS, BROKER_TO_WORKER)
        except ProtocolError as exc:
            print(f"worker: dropped a malformed message from the service: {exc.message}", file=sys.stderr)
            return
        if message.type == "task":
            self.process.send_task(frames, message.fields["job"])
        elif message.type == "cancel":
            self.process.send(frames)

    def _service_gone(self, now: float) -> str | None:
        if os.getppid() != self.parent_pid:
            return "the service that started it is gone"
        if now - self.last_heard > PATIENCE * self.heartbeat_s:
            return "the service stopped answering"
        return None

    def run(self, stop: threading.Event) -> int:
        try:
            ready = self.process.wait_ready(lambda: stop.is_set() or os.getppid() != self.parent_pid)
        except JobProcessGone as exc:
            print(f"worker {self.name}: {exc}", file=sys.stderr, flush=True)
            return 2
        if not ready:
            return 0
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(self.endpoint)
        self._send(encode("ready", {"models": ready["models"], "device": self.process.device, "pid": os.getpid(),
                                    "name": self.name}))
        self.last_heard = time.monotonic()
        print(f"worker {self.name} on {self.process.device}: serving {', '.join(ready['models'])} for "
              f"{self.endpoint} (job process {self.process.process.pid})", file=sys.stderr, flush=True)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.process.sock, zmq.POLLIN)
        code = 0
        while not stop.is_set():
            if self.sock in dict(poller.poll(50)):
                self._from_service()
            for _, frames in self.process.receive(0):
                self._send(frames)
            now = time.monotonic()
            if now - self.last_sent >= self.heartbeat_s:
                self._send(encode("heartbeat", {"time": time.time()}))
            if why := self._service_gone(now):
                print(f"worker {self.name}: {why}; exiting", file=sys.stderr, flush=True)
                break
            if why := self.process.problem():
                print(f"worker {self.name}: {why}; ending it and exiting (the service resumes the job elsewhere)",
                      file=sys.stderr, flush=True)
                code = 1
                break
        self.sock.close(linger=0)
        return code


def main(argv: list[str] | None = None) -> int:
    """The entry point of a worker process the service starts (see `backend.service.supervisor`)."""
    parser = argparse.ArgumentParser(prog="python -m backend.service.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, help="the service's private worker link")
    parser.add_argument("--parent", type=int, required=True, help="the service's pid: exit when it is gone")
    parser.add_argument("--model", action="append", required=True, help="a guidance spec to load")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--hang-s", type=float, default=HANG_S)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    process = JobProcess(args.model, args.device, f"{socket.gethostname()}:{os.getpid()}", args.heartbeat_s,
                         args.hang_s)
    process.start()
    code = 1
    try:
        code = Worker(args.connect, process, args.parent, args.heartbeat_s).run(stop)
    finally:
        # a hung job process gets no grace; a healthy one drops its job cleanly (the service requeues it)
        process.stop(0 if code == 1 else 10)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
