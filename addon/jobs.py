"""What the add-on knows about the server and each scene's job, between events (plain Python, no bpy)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .advice import advise

FINAL_STATES = frozenset({"finished", "failed", "cancelled"})


@dataclass
class ServerStatus:
    connected: bool = False
    message: str = "Connecting…"  # why it is not connected, in words
    info: dict[str, Any] = field(default_factory=dict)  # the service's welcome: server, models, queue, workers

    def summary(self) -> str:
        if not self.connected:
            return self.message
        info = self.info
        parts = [info.get("server", "LatentForge"), f"v{info['version']}" if info.get("version") else ""]
        return " ".join(p for p in parts if p)

    def update(self, status: dict[str, Any]) -> None:
        """A heartbeat's status (workers, queue, models) replaces what the welcome said."""
        self.info.update({k: status[k] for k in ("workers", "queue", "models") if k in status})

    def details(self) -> list[str]:
        info = self.info
        out = []
        if models := info.get("models"):
            out.append("Model: " + ", ".join(str(m) for m in models))
        if "workers" in info:
            out.append(f"Workers: {info['workers']}  ·  Queue: {info.get('queue', 0)}")
        return out


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


STAGE_LABELS = {"latent": "Latent", "rgb_refine": "RGB refine", "export": "Export"}


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage) or stage.replace("_", " ").capitalize()


@dataclass
class PaintPlan:
    """What a paint sent, so its result lands on the right faces and leaves the rest as they are."""

    polygons: np.ndarray  # [P] the painted polygons (all of them in Object Mode)
    slots: np.ndarray  # [P] their material slot when sent
    uv_map: str | None  # the UV map painted through; None: the service made new UVs
    copies: str | None = None  # the image the painted texture copies (its name), if any
    notes: list[str] = field(default_factory=list)  # slots kept around the paint as their viewport colour
    shared: str = "SINGLE"  # a mesh other objects show too: SINGLE copies it for this object first, ALL paints it


@dataclass
class Job:
    """One scene's job, from the click to its result or error."""

    scene: int  # the scene's session_uid: survives renames
    task: str  # generate | paint | fetch
    prompt: str = ""
    request: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # ours, until the service names it
    job: str | None = None  # the service's id
    state: str = "submitting"  # submitting → queued → running → finished | failed | cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""  # the service's error, verbatim, and what to do about it
    code: str = ""  # the error's code
    details: dict[str, Any] = field(default_factory=dict)  # what the error measured (e.g. no_surface densities)
    extra: dict[str, Any] = field(default_factory=dict)  # the Extra Settings the job was sent with
    sketch: list[int] = field(default_factory=list)  # session_uids of the objects to hide and collect
    target: int | None = None  # paint: the painted object's session_uid
    loops: np.ndarray | None = None  # paint: the mesh loop of each sent vertex
    paint: PaintPlan | None = None  # paint: what was painted, through which UV map
    anchor: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the frame the arrays were sent in: the new object's origin
    object_id: str | None = None  # paint: the painted object's and its mesh's identities (identity.py)
    mesh_id: str | None = None
    topology: str | None = None  # paint: the painted mesh's fingerprint when sent
    object_name: str = ""
    faces_then: int = 0
    file: str = ""  # the .blend the job was started in ("" unsaved) and which load of it (None: not known)
    load: int | None = None
    held: str | None = None  # why its result waits for the artist instead of landing
    started: float = field(default_factory=time.monotonic)
    preview_at: float = 0.0
    preview: str | None = None  # name of the bpy image holding the latest preview
    result_dir: str | None = None
    cancel_requested: bool = False
    group: Any = None  # a submit of several seeds: its variants (variants.VariantGroup) until one is finished

    @property
    def active(self) -> bool:
        return self.state not in FINAL_STATES

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def progress_text(self) -> str:
        if self.state == "submitting":
            return "Sending…"
        if self.state == "queued":
            return "Queued"
        if not self.total:
            return self.stage or self.state.capitalize()
        text = f"{stage_label(self.stage)} {self.step}/{self.total}"
        if self.eta_s is not None:
            text += f"  ·  {format_duration(self.eta_s)} left"
        return text

    def on_progress(self, event: dict[str, Any]) -> None:
        self.state = "running"
        self.stage = str(event.get("stage", ""))
        self.step = int(event.get("step", 0))
        self.total = int(event.get("total", 0))
        self.eta_s = event.get("eta_s")

    def on_summary(self, summary: dict[str, Any]) -> None:
        """A `job` message (status or cancel): state, last progress, error."""
        self.job = summary.get("job", self.job)
        self.prompt = self.prompt or summary.get("prompt", "")
        if not self.active:  # a job that ended never runs again (a late or repeated answer changes nothing)
            return
        state = summary.get("state", self.state)
        if state in ("failed", "cancelled"):
            self.fail(summary.get("error") or {}, state)
            return
        if progress := summary.get("progress"):
            self.on_progress(progress)
        if state != "finished":  # a finished job stays "running" until its result is in the scene
            self.state = state

    @property
    def reexport_threshold(self) -> float | None:
        """The density threshold a Re-export would use: offered when the export found no surface and the
        service kept the trained field."""
        if self.state != "failed" or self.code != "no_surface" or not self.details.get("reexport"):
            return None
        return self.details.get("suggested_threshold")

    def fail(self, error: dict[str, Any], state: str = "failed") -> None:
        self.state = "cancelled" if error.get("code") == "cancelled" or state == "cancelled" else "failed"
        self.code = str(error.get("code") or "")
        self.details = dict(error.get("details") or {})
        message = error.get("message") or f"the job was {state}"
        hint = advise(self.code, message, self.details, self.extra) or error.get("hint")
        self.message = f"{message} ({hint})" if hint else message

    def restart(self) -> None:
        """Back to waiting for the service, e.g. after a Re-export: the same job id, a new run."""
        self.state, self.stage, self.step, self.total, self.eta_s = "queued", "", 0, 0, None
        self.message, self.code, self.details = "", "", {}
        self.started, self.cancel_requested = time.monotonic(), False


class Jobs:
    """At most one job per scene; finished ones stay until the next starts, so their outcome shows."""

    def __init__(self) -> None:
        self._by_scene: dict[int, Job] = {}

    def get(self, scene: int) -> Job | None:
        return self._by_scene.get(scene)

    def active(self, scene: int) -> Job | None:
        job = self._by_scene.get(scene)
        return job if job is not None and job.active else None

    def add(self, job: Job) -> Job:
        if (running := self.active(job.scene)) is not None:
            raise RuntimeError(f"this scene already has a job running ({running.progress_text()}): cancel it first")
        self._by_scene[job.scene] = job
        return job

    def find(self, job: str | None = None, request: str | None = None) -> Job | None:
        """The job with this id (or request): a running one first, then one whose result waits, then any."""
        found = [item for item in self._by_scene.values()
                 if (job is not None and item.job == job) or (request is not None and item.request == request)]
        found.sort(key=lambda item: (not item.active, item.held is None))
        return found[0] if found else None

    def move(self, job: Job, scene: int) -> None:
        """The job now belongs to another scene (its file was opened again): it replaces that scene's ended job."""
        if self._by_scene.get(job.scene) is job:
            del self._by_scene[job.scene]
        if (other := self._by_scene.get(scene)) is not None and other is not job and other.active:
            raise RuntimeError("this scene already has a job running: cancel it first")
        job.scene = scene
        self._by_scene[scene] = job

    def all(self) -> list[Job]:
        return list(self._by_scene.values())

    def any_active(self) -> bool:
        return any(job.active for job in self._by_scene.values())
