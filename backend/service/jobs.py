"""Jobs on disk: one folder per job, so nothing a client submitted is lost when a client or the service dies.

    <jobs>/<id>/spec.json          the submit's fields
    <jobs>/<id>/inputs/<name>.npy  its arrays (sketch or mesh); inputs/<name>.blob its blobs (a reference image)
    <jobs>/<id>/state.json         state, attempts, error: replaced atomically on every change
    <jobs>/<id>/checkpoint.npz     the latest checkpoint a worker sent (JSON skeleton + arrays); a variant's
                                   draft keeps it after its result, so that it can be finished
    <jobs>/<id>/result/            mesh.npz, texture.png, asset.glb (normal.png: a refined mesh's normal map)

A job folder appears only once complete (built under a hidden name, then renamed). Ids are uuid4 hex,
checked against a strict pattern before any path is built from one. Nothing here uses pickle.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
import typing
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from backend.export.files import write_atomically
from backend.service import protocol
from backend.service.protocol import FINAL_STATES, JOB_ID

SPEC, STATE, INPUTS, CHECKPOINT, RESULT = "spec.json", "state.json", "inputs", "checkpoint.npz", "result"
BLOB_SUFFIX = ".blob"  # inputs/<name>.blob: a blob the job was submitted with, as sent (the image: a PNG)
MESH_NPZ, TEXTURE_PNG, ASSET_GLB, NORMAL_PNG = "mesh.npz", "texture.png", "asset.glb", "normal.png"
_SKELETON = "__state__"  # the checkpoint's JSON skeleton, stored as uint8 inside the .npz


def default_jobs_dir() -> Path:
    """The per-user data folder for jobs (XDG on Linux, Application Support on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "latentforge" / "jobs"


class UnknownJob(KeyError):
    """No job folder has this id (or the id is malformed)."""


@dataclass
class JobRecord:
    """What state.json holds, plus live progress that is kept in memory only."""

    id: str
    task: str
    created: float
    state: str = "queued"
    updated: float = 0.0
    owner: str = ""
    prompt: str = ""
    model: str = ""
    attempts: int = 0  # times handed to a worker
    crashes: int = 0  # times its worker (or the service) died while running it
    cancel_requested: bool = False
    error: dict | None = None  # {"code", "message", "hint"}
    checkpoint: dict | None = None  # {"stage", "step"} of the saved checkpoint
    worker: str = ""
    stats: dict | None = None  # of the result: vertices, faces, seconds, worker
    # a variant: the id of its group (the submit that asked for several), its seed, and while it is a draft the
    # first-stage steps the draft runs (None once it is finished: it then runs the job's whole schedule)
    group: str = ""
    seed: int | None = None
    draft: int | None = None
    finish_requested: bool = False  # finished while its draft ran: that run's end continues into the finish
    progress: dict | None = field(default=None, metadata={"volatile": True})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("volatile")}

    def summary(self) -> dict[str, Any]:
        """The job as `job` and `jobs` messages describe it."""
        out = asdict(self)
        out["job"] = out.pop("id")
        out.pop("owner")
        return out


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise UnknownJob(f"{str(job_id)[:40]!r} is not a job id")
    return job_id


class JobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    # --- creation and state

    def create(self, spec: dict[str, Any], arrays: dict[str, np.ndarray], owner: str,
               blobs: dict[str, bytes] | None = None, group: str = "", draft: int | None = None) -> JobRecord:
        """A new queued job; `group` and `draft` (its first-stage steps) when it is a variant's draft."""
        job_id = uuid.uuid4().hex
        staging = self.root / f".new-{job_id}"
        (staging / INPUTS).mkdir(parents=True)
        (staging / SPEC).write_text(json.dumps(spec, allow_nan=False), encoding="utf-8")
        for name, array in arrays.items():
            np.save(staging / INPUTS / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for name, data in (blobs or {}).items():
            (staging / INPUTS / f"{name}{BLOB_SUFFIX}").write_bytes(data)
        now = time.time()
        record = JobRecord(job_id, spec["task"], now, updated=now, owner=owner, prompt=spec.get("prompt", ""),
                           model=spec.get("model", ""), group=group, seed=spec.get("seed") if group else None,
                           draft=draft)
        (staging / STATE).write_text(json.dumps(record.to_json()), encoding="utf-8")
        os.replace(staging, self.folder(job_id))
        return record

    def save(self, record: JobRecord) -> None:
        record.updated = time.time()
        write_atomically({self.folder(record.id) / STATE: json.dumps(record.to_json()).encode("utf-8")})

    def load_all(self) -> list[JobRecord]:
        """Every job folder's record, oldest first; unreadable ones come back failed with the reason."""
        records = []
        for path in self.root.iterdir():
            if path.name.startswith(".new-"):
                shutil.rmtree(path, ignore_errors=True)  # never accepted: the service died while creating it
            elif path.is_dir() and JOB_ID.fullmatch(path.name):
                records.append(self._load(path))
        return sorted(records, key=lambda r: r.created)

    def _load(self, path: Path) -> JobRecord:
        try:
            return self._read(path)
        except Exception as exc:  # any content at all: this job is reported failed, every other one loads
            try:
                created = path.stat().st_mtime
            except OSError:
                created = time.time()
            record = JobRecord(path.name, "unknown", created, state="failed", updated=created)
            with contextlib.suppress(Exception):  # keep its owner when that much is readable
                owner = json.loads((path / STATE).read_text(encoding="utf-8")).get("owner")
                if isinstance(owner, str) and protocol.valid_text(owner):
                    record.owner = owner
            reason = protocol.printable(f"{type(exc).__name__}: {exc}"[:500])
            record.error = {"code": "job_failed", "message": f"the job's files are unreadable ({reason})",
                            "hint": "submit the job again"}
            return record

    def _read(self, path: Path) -> JobRecord:
        """The record of a job folder, checked field by field against JobRecord, with the files it needs."""
        data = json.loads((path / STATE).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{STATE} holds a {type(data).__name__}, not an object")
        hints = typing.get_type_hints(JobRecord)
        stored = {f.name for f in fields(JobRecord) if not f.metadata.get("volatile")}
        unknown = sorted(set(data) - stored)
        if unknown:
            raise ValueError(f"{STATE} has unknown fields {', '.join(map(repr, unknown))[:200]}")
        for name in ("id", "task", "created"):
            if name not in data:
                raise ValueError(f"{STATE} has no {name!r}")
        for name, value in data.items():
            if not _fits(value, hints[name]):
                raise ValueError(f"{STATE} field {name!r} is not a valid {hints[name]}")
        record = JobRecord(**data)
        if record.id != path.name:
            raise ValueError("its state file names another job")
        if record.state not in protocol.JOB_STATES:
            raise ValueError(f"unknown state {record.state[:40]!r}")
        spec = json.loads((path / SPEC).read_text(encoding="utf-8"))
        if not _fits(spec, dict) or not isinstance(spec.get("task"), str) or spec["task"] not in protocol.TASK_NAMES:
            raise ValueError(f"{SPEC} is not the spec of a job")
        if record.state == "finished":
            for name in (MESH_NPZ, TEXTURE_PNG, ASSET_GLB):
                if not (path / RESULT / name).is_file():
                    raise ValueError(f"its result has no {name}")
        elif record.state not in FINAL_STATES:  # it will run again: what it runs from must load
            protocol.check_mesh_arrays(spec["task"], self.inputs(record.id))
            self.load_checkpoint(record.id)
        return record

    def drop_inputs(self, job_id: str) -> None:
        """Remove what a job that will never run again was given (its mesh) and its checkpoint."""
        folder = self.folder(job_id)
        shutil.rmtree(folder / INPUTS, ignore_errors=True)
        (folder / CHECKPOINT).unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        """Delete a job's folder: renamed away first, so a crash midway leaves no half job behind."""
        folder = self.folder(job_id)
        doomed = self.root / f".new-{job_id}"  # load_all clears these
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def size(self, job_id: str) -> int:
        """Bytes of a job's files."""
        total = 0
        for root, _, names in os.walk(self.folder(job_id)):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    # --- inputs

    def save_spec(self, job_id: str, spec: dict[str, Any]) -> None:
        """Replace a job's spec (a reexport changes its export settings)."""
        write_atomically({self.folder(job_id) / SPEC: json.dumps(spec, allow_nan=False).encode("utf-8")})

    def spec(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.folder(job_id) / SPEC).read_text(encoding="utf-8"))

    def inputs(self, job_id: str) -> dict[str, np.ndarray]:
        folder = self.folder(job_id) / INPUTS
        return {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}

    def input_blobs(self, job_id: str) -> dict[str, bytes]:
        """The blobs the job was submitted with (its reference image), by name."""
        folder = self.folder(job_id) / INPUTS
        return {p.name[:-len(BLOB_SUFFIX)]: p.read_bytes() for p in sorted(folder.glob(f"*{BLOB_SUFFIX}"))}

    # --- checkpoints

    def save_checkpoint(self, job_id: str, skeleton: dict, arrays: dict[str, np.ndarray]) -> None:
        data = json.dumps(skeleton, allow_nan=False).encode("utf-8")
        arrays = {_SKELETON: np.frombuffer(data, dtype=np.uint8), **arrays}
        write_atomically({self.folder(job_id) / CHECKPOINT: _npz_bytes(arrays)})

    def has_checkpoint(self, job_id: str) -> bool:
        return (self.folder(job_id) / CHECKPOINT).is_file()

    def load_checkpoint(self, job_id: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        path = self.folder(job_id) / CHECKPOINT
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        skeleton = json.loads(arrays.pop(_SKELETON).tobytes().decode("utf-8"))
        return skeleton, arrays

    # --- results

    def save_result(self, job_id: str, arrays: dict[str, np.ndarray], texture_png: bytes, glb: bytes,
                    normal_png: bytes | None = None, tiles: dict[str, bytes] | None = None,
                    keep_checkpoint: bool = False) -> Path:
        """`tiles`: a result's other images by blob name (a UDIM paint's tile.<number>, a level of detail's
        lod.<k>.normal_map and lod.<k>.texture), each kept as <name>.png. `keep_checkpoint`: the job may resume
        once more (a variant's draft that can be finished)."""
        folder = self.folder(job_id) / RESULT
        files = {folder / MESH_NPZ: _npz_bytes(arrays), folder / TEXTURE_PNG: texture_png, folder / ASSET_GLB: glb}
        if normal_png is not None:
            files[folder / NORMAL_PNG] = normal_png
        for name, png in (tiles or {}).items():
            files[folder / f"{name}.png"] = png
        write_atomically(files)
        if not keep_checkpoint:
            (self.folder(job_id) / CHECKPOINT).unlink(missing_ok=True)  # a finished job never resumes
        return folder / ASSET_GLB

    def load_result(self, job_id: str) -> tuple[dict[str, np.ndarray], bytes, Path]:
        folder = self.folder(job_id) / RESULT
        with np.load(folder / MESH_NPZ, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return arrays, (folder / TEXTURE_PNG).read_bytes(), folder / ASSET_GLB

    def load_tiles(self, job_id: str) -> dict[str, bytes]:
        """A result's other images by blob name: a UDIM paint's tiles (tile.<number>) and the levels of detail's
        normal maps and textures (lod.<k>.normal_map, lod.<k>.texture); none for other results."""
        folder = self.folder(job_id) / RESULT
        return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))
                if protocol.TILE_BLOB.fullmatch(p.stem) or protocol.lod_item(p.stem) is not None}

    def load_normal_map(self, job_id: str) -> bytes | None:
        """The result's tangent-space normal map (PNG), when its export baked one."""
        path = self.folder(job_id) / RESULT / NORMAL_PNG
        return path.read_bytes() if path.is_file() else None


def _fits(value: Any, tp: Any) -> bool:
    """Whether a value read from JSON fits a JobRecord annotation (and can be sent in a reply as it is)."""
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str) and protocol.valid_text(value)
    if tp is type(None):
        return value is None
    if tp is dict:
        if not isinstance(value, dict) or protocol.invalid_text(value) is not None:
            return False
        try:
            json.dumps(value, allow_nan=False)
        except (ValueError, RecursionError):
            return False
        return True
    return any(_fits(value, arg) for arg in typing.get_args(tp))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
