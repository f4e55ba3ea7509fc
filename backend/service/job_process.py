"""A worker's job process: it loads the models once and runs one job at a time, for the worker that started it.

The worker (`backend.service.worker`, a local process or a Ray actor) holds the link to the service and
answers its heartbeats; the jobs run here, in another interpreter, so a call that holds this process's
interpreter for minutes (a large UV unwrap, a C extension that keeps the GIL) never silences the worker.
This process speaks the worker messages of PROTOCOL.md to its worker over a private link: `ready` once its
models are loaded and after each job, `progress`, `checkpoint` (every checkpoint the loop writes), then
`result` or `error`, and a `heartbeat` every interval while its loop turns, which is how the worker tells a
busy job from a hung one. It exits as soon as the worker that started it is gone.

Started as `python -m backend.service.job_process --connect LINK --parent PID --name NAME --model SPEC
--device DEV`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from backend.errors import LatentForgeError
from backend.events import Event, Progress, StageStarted
from backend.export.glb import png_bytes
from backend.guidance.base import Guidance
from backend.loop import CHECKPOINT_NAME
from backend.service import checkpoint_wire
from backend.service.protocol import (
    BROKER_TO_WORKER,
    CHECKPOINT_PREFIX,
    ERROR_CODES,
    TRUSTED_LIMITS,
    Frames,
    Message,
    ProtocolError,
    decode,
    encode,
    error_fields,
)
from backend.service.tasks import JobSpec, run_spec

PROGRESS_EVERY_S = 0.1  # steps can be much faster than a client needs to hear about them
PREVIEW_EVERY_S = 2.0  # previews are PNGs: at most this often
# Tests only: the path of a file holding a number of seconds. The first progress event that finds it
# removes it and holds this interpreter (the GIL) that long in one C call, as a long native call would.
HOLD_GIL_HOOK = "LATENTFORGE_TEST_HOLD_GIL"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class EventForwarder:
    """The task's event sink (in the job thread): throttled progress, previews and new checkpoints."""

    def __init__(self, job: str, send: Callable[[Frames], None], job_dir: Path, worker: str) -> None:
        self.job, self.send, self.job_dir, self.worker = job, send, job_dir, worker
        self.last_progress = self.last_preview = -math.inf
        self.last_eta_s: float | None = None
        self.checkpoint_stamp = self._stamp()

    def __call__(self, event: Event) -> None:
        self.ship_checkpoint()
        if isinstance(event, Progress) and event.step and os.environ.get(HOLD_GIL_HOOK):
            hold_gil_if_asked(os.environ[HOLD_GIL_HOOK])
        now = time.monotonic()
        if isinstance(event, StageStarted):  # a stage's start keeps the job's last ETA: the work left is the same
            self._progress(event.stage, 0, event.total, {}, self.last_eta_s, None)
        elif isinstance(event, Progress):
            self.last_eta_s = event.eta_s
            preview = event.preview if event.preview is not None and now - self.last_preview >= PREVIEW_EVERY_S \
                else None
            if preview is None and event.step < event.total and now - self.last_progress < PROGRESS_EVERY_S:
                return
            if preview is not None:
                self.last_preview = now
            self._progress(event.stage, event.step, event.total, event.losses, event.eta_s, preview)
        self.last_progress = now

    def _progress(self, stage: str, step: int, total: int, losses: dict, eta_s: float | None,
                  preview: np.ndarray | None) -> None:
        fields = {"job": self.job, "stage": stage, "step": step, "total": total, "worker": self.worker,
                  "losses": {k: _finite_or_none(v) for k, v in losses.items()},
                  "eta_s": None if eta_s is None or not math.isfinite(eta_s) else max(0.0, float(eta_s))}
        self.send(encode("progress", fields, blobs={"preview": png_bytes(preview)} if preview is not None else None))

    def _stamp(self) -> int | None:
        try:
            return (self.job_dir / CHECKPOINT_NAME).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def ship_checkpoint(self) -> None:
        """Send the checkpoint file when the loop has written a new one since the last look."""
        stamp = self._stamp()
        if stamp is None or stamp == self.checkpoint_stamp:
            return
        self.checkpoint_stamp = stamp
        try:
            flat = checkpoint_wire.read(self.job_dir)
        except (ValueError, RuntimeError, OSError) as exc:  # the job goes on; a requeue restarts further back
            print(f"worker: cannot ship the checkpoint of job {self.job}: {exc}", file=sys.stderr)
            return
        if flat is not None:
            skeleton, arrays = flat
            self.send(encode("checkpoint", {"job": self.job, "state": skeleton}, arrays))


class JobRun:
    """One job in its own thread, so the job process's loop keeps taking cancels and sending heartbeats."""

    def __init__(self, message: Message, guidance: Guidance, worker: str, outbox: queue.Queue) -> None:
        self.job = message.fields["job"]
        self.cancel = threading.Event()
        self.outbox = outbox
        self.thread = threading.Thread(target=self._run, args=(message, guidance, worker), daemon=True,
                                       name=f"job-{self.job[:8]}")
        self.thread.start()

    def _run(self, message: Message, guidance: Guidance, worker: str) -> None:
        job_dir = Path(tempfile.mkdtemp(prefix="latentforge-job-"))
        try:
            self.outbox.put(self._execute(message, guidance, worker, job_dir))
        except LatentForgeError as exc:
            code = exc.code if exc.code in ERROR_CODES else "job_failed"
            self.outbox.put(encode("error", error_fields(code, exc.message, exc.hint, job=self.job,
                                                         details=getattr(exc, "details", None))))
        except Exception as exc:  # a bug: report it to the client, keep the worker alive
            traceback.print_exc()
            self.outbox.put(encode("error", error_fields("internal", f"{type(exc).__name__}: {exc}",
                                                         "see the worker's log", job=self.job)))
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _execute(self, message: Message, guidance: Guidance, worker: str, job_dir: Path) -> Frames:
        arrays = {k: v for k, v in message.arrays.items() if not k.startswith(CHECKPOINT_PREFIX)}
        if message.fields.get("checkpoint"):
            saved = {k: v for k, v in message.arrays.items() if k.startswith(CHECKPOINT_PREFIX)}
            checkpoint_wire.write(job_dir, message.fields["checkpoint"], saved)
        spec_fields = message.fields["spec"]
        spec = JobSpec(spec_fields["task"], spec_fields, arrays, dict(message.blobs))
        start = time.perf_counter()
        result = run_spec(spec, guidance, job_dir, EventForwarder(self.job, self.outbox.put, job_dir, worker),
                          self.cancel)
        mesh = result.mesh
        stats = {"vertices": len(mesh.vertices), "faces": len(mesh.faces),
                 "seconds": round(time.perf_counter() - start, 3), "worker": worker}
        if getattr(result, "charts", 0):
            stats["charts"] = result.charts
        blobs = {"texture": Path(result.png_path).read_bytes(), "glb": Path(result.glb_path).read_bytes()}
        if getattr(result, "normal_map_path", None) is not None:  # a refined mesh's tangent-space normal map
            blobs["normal_map"] = Path(result.normal_map_path).read_bytes()
        for tile, path in getattr(result, "tiles", {}).items():  # a UDIM paint's image per tile
            blobs[f"tile.{tile}"] = Path(path).read_bytes()
        arrays = {"vertices": mesh.vertices, "faces": mesh.faces, "uvs": mesh.uvs,
                  "vertex_map": getattr(result, "vertex_map", None)}  # paint results map back to the input
        levels = getattr(result, "levels", [])
        if levels:  # a game-ready export: LOD0 is the result's own mesh, LOD1 … go as lod.<k>.*
            arrays |= level_arrays(levels, getattr(result, "textures", []), blobs)
            stats["lods"] = [level.face_count for level in levels]
            if levels[0].polygons is not None:
                stats["quads"] = [round(level.polygons.quad_ratio, 4) for level in levels]
        return encode("result", {"job": self.job, "stats": stats}, {k: v for k, v in arrays.items() if v is not None},
                      blobs)


def level_arrays(levels: list, textures: list, blobs: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The wire's arrays of a game-ready export's levels (PROTOCOL.md): LOD0's polygons, and each later level's
    mesh, polygons, normal map and, when it reads a texture of its own, that texture (added to `blobs`)."""
    arrays: dict[str, np.ndarray] = {}
    for k, level in enumerate(levels):
        prefix = f"lod.{k}." if k else ""
        if k:
            arrays |= {f"{prefix}vertices": level.mesh.vertices, f"{prefix}faces": level.mesh.faces,
                       f"{prefix}uvs": level.mesh.uvs}
            blobs[f"{prefix}normal_map"] = png_bytes(level.normal_map)
            if level.texture:
                blobs[f"{prefix}texture"] = png_bytes(textures[level.texture])
        if level.polygons is not None:
            arrays |= {f"{prefix}polygon_sizes": level.polygons.sizes.astype(np.int32),
                       f"{prefix}polygon_corners": level.polygons.corners.astype(np.int32)}
    return arrays


def hold_gil_if_asked(trigger: str) -> None:
    """The test hook: when the file `trigger` exists, take it and hold the GIL for the seconds it holds, in
    one C call made without releasing the interpreter (ctypes.PyDLL), so no other thread here can run."""
    try:
        seconds = float(Path(trigger).read_text())
        os.remove(trigger)  # one job takes it, even with several processes watching the same file
    except (OSError, ValueError):
        return
    print(f"job process {os.getpid()}: holding the interpreter for {seconds:g} s (test hook)", file=sys.stderr,
          flush=True)
    if sys.platform == "win32":
        ctypes.PyDLL("kernel32").Sleep(int(seconds * 1000))
    else:
        ctypes.PyDLL(None).usleep(ctypes.c_uint(int(seconds * 1e6)))


class JobLoop:
    """The job process's loop: tasks and cancels in from the worker, the job's messages and heartbeats out."""

    def __init__(self, endpoint: str, guidances: dict[str, Guidance], device: str, parent_pid: int, name: str,
                 heartbeat_s: float = 1.0) -> None:
        self.endpoint, self.guidances, self.device = endpoint, guidances, device
        self.heartbeat_s, self.parent_pid, self.name = heartbeat_s, parent_pid, name
        self.context = zmq.Context.instance()
        self.outbox: queue.Queue = queue.Queue()
        self.run_: JobRun | None = None
        self.sock: zmq.Socket | None = None
        self.last_beat = 0.0

    def _send(self, frames: Frames) -> None:
        self.sock.send_multipart(frames, copy=False)

    def _ready(self) -> None:
        self._send(encode("ready", {"models": sorted(self.guidances), "device": self.device, "pid": os.getpid(),
                                    "name": self.name}))

    def _handle(self, message: Message) -> None:
        if message.type == "task":
            job, model = message.fields["job"], message.fields["spec"].get("model", "")
            if self.run_ is not None:
                self._send(encode("error", error_fields("busy", f"worker {self.name} is running another job",
                                                        job=job)))
            elif model not in self.guidances:
                self._send(encode("error", error_fields("unknown_model", f"worker {self.name} has not loaded "
                                                        f"{model!r}", job=job)))
                self._ready()
            else:
                self.run_ = JobRun(message, self.guidances[model], self.name, self.outbox)
        elif message.type == "cancel" and self.run_ is not None and self.run_.job == message.fields["job"]:
            self.run_.cancel.set()

    def _beat(self) -> None:
        """A heartbeat for the worker; dropped rather than waited for when the worker is not reading."""
        self.last_beat = time.monotonic()
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(encode("heartbeat", {"time": time.time()}), flags=zmq.NOBLOCK)

    def run(self, stop: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(self.endpoint)
        self._ready()
        print(f"job process {os.getpid()} of worker {self.name} on {self.device}: serving "
              f"{', '.join(sorted(self.guidances))}", file=sys.stderr, flush=True)
        while not stop.is_set():
            if self.sock.poll(50):
                try:
                    self._handle(decode(self.sock.recv_multipart(), TRUSTED_LIMITS, BROKER_TO_WORKER))
                except ProtocolError as exc:
                    print(f"job process: dropped a malformed message from its worker: {exc.message}",
                          file=sys.stderr)
            while not self.outbox.empty():
                self._send(self.outbox.get_nowait())
            if self.run_ is not None and not self.run_.thread.is_alive() and self.outbox.empty():
                self.run_ = None
                self._send(encode("ready", {"models": sorted(self.guidances)}))
            if time.monotonic() - self.last_beat >= self.heartbeat_s:
                self._beat()
            if os.getppid() != self.parent_pid:
                print(f"job process {os.getpid()}: its worker {self.name} is gone; exiting", file=sys.stderr)
                break
        if self.run_ is not None:  # the worker is gone or stopping (the service requeues the job itself)
            self.run_.cancel.set()
            self.run_.thread.join()
        self.sock.close(linger=0)
        return 0



def main(argv: list[str] | None = None) -> int:
    """The entry point of the job process a worker starts (see `backend.service.worker.JobProcess`)."""
    from backend.guidance import build_guidance

    parser = argparse.ArgumentParser(prog="python -m backend.service.job_process",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, help="the worker's private link")
    parser.add_argument("--parent", type=int, required=True, help="the worker's pid: exit when it is gone")
    parser.add_argument("--name", required=True, help="the worker's name, for the job's messages")
    parser.add_argument("--model", action="append", required=True, help="a guidance spec to load")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.device == "cpu" and os.environ.get("OMP_NUM_THREADS"):  # the CPUs the worker was given (Ray: its share)
        import torch

        torch.set_num_threads(max(1, int(float(os.environ["OMP_NUM_THREADS"]))))
    try:
        guidances = {spec: build_guidance(spec, args.device) for spec in args.model}  # loaded once, kept
    except LatentForgeError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    return JobLoop(args.connect, guidances, args.device, args.parent, args.name, args.heartbeat_s).run(stop)


if __name__ == "__main__":
    raise SystemExit(main())
