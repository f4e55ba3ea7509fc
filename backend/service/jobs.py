"""Jobs on disk: one folder per job, so nothing a client submitted is lost when a client or the service dies.

    <jobs>/<id>/spec.json          the submit's fields
    <jobs>/<id>/inputs/<name>.npy  its arrays (sketch or mesh)
    <jobs>/<id>/state.json         state, attempts, error: replaced atomically on every change
    <jobs>/<id>/checkpoint.npz     the latest checkpoint a worker sent (JSON skeleton + arrays)
    <jobs>/<id>/result/            mesh.npz, texture.png, asset.glb (normal.png: a refined mesh's normal map)

A job folder appears only once complete (built under a hidden name, then renamed). Ids are uuid4 hex,
checked against a strict pattern before any path is built from one. Nothing here uses pickle.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from backend.export.files import write_atomically
from backend.service.protocol import JOB_ID

SPEC, STATE, INPUTS, CHECKPOINT, RESULT = "spec.json", "state.json", "inputs", "checkpoint.npz", "result"
MESH_NPZ, TEXTURE_PNG, ASSET_GLB, NORMAL_PNG = "mesh.npz", "texture.png", "asset.glb", "normal.png"
_SKELETON = "__state__"  # the checkpoint's JSON skeleton, stored as uint8 inside the .npz
FINAL_STATES = frozenset({"finished", "failed", "cancelled"})


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

    def create(self, spec: dict[str, Any], arrays: dict[str, np.ndarray], owner: str) -> JobRecord:
        job_id = uuid.uuid4().hex
        staging = self.root / f".new-{job_id}"
        (staging / INPUTS).mkdir(parents=True)
        (staging / SPEC).write_text(json.dumps(spec, allow_nan=False), encoding="utf-8")
        for name, array in arrays.items():
            np.save(staging / INPUTS / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        now = time.time()
        record = JobRecord(job_id, spec["task"], now, updated=now, owner=owner, prompt=spec.get("prompt", ""),
                           model=spec.get("model", ""))
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
            data = json.loads((path / STATE).read_text(encoding="utf-8"))
            known = {f.name for f in fields(JobRecord)}
            record = JobRecord(**{k: v for k, v in data.items() if k in known})
            if record.id != path.name:
                raise ValueError("its state file names another job")
            json.loads((path / SPEC).read_text(encoding="utf-8"))
            return record
        except (OSError, ValueError, TypeError) as exc:
            record = JobRecord(path.name, "unknown", path.stat().st_mtime, state="failed")
            record.error = {"code": "job_failed", "message": f"the job's files are unreadable ({exc})",
                            "hint": "submit the job again"}
            return record

    # --- inputs

    def spec(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.folder(job_id) / SPEC).read_text(encoding="utf-8"))

    def inputs(self, job_id: str) -> dict[str, np.ndarray]:
        folder = self.folder(job_id) / INPUTS
        return {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}

    # --- checkpoints

    def save_checkpoint(self, job_id: str, skeleton: dict, arrays: dict[str, np.ndarray]) -> None:
        data = json.dumps(skeleton, allow_nan=False).encode("utf-8")
        arrays = {_SKELETON: np.frombuffer(data, dtype=np.uint8), **arrays}
        write_atomically({self.folder(job_id) / CHECKPOINT: _npz_bytes(arrays)})

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
                    normal_png: bytes | None = None) -> Path:
        folder = self.folder(job_id) / RESULT
        files = {folder / MESH_NPZ: _npz_bytes(arrays), folder / TEXTURE_PNG: texture_png, folder / ASSET_GLB: glb}
        if normal_png is not None:
            files[folder / NORMAL_PNG] = normal_png
        write_atomically(files)
        (self.folder(job_id) / CHECKPOINT).unlink(missing_ok=True)  # a finished job never resumes
        return folder / ASSET_GLB

    def load_result(self, job_id: str) -> tuple[dict[str, np.ndarray], bytes, Path]:
        folder = self.folder(job_id) / RESULT
        with np.load(folder / MESH_NPZ, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return arrays, (folder / TEXTURE_PNG).read_bytes(), folder / ASSET_GLB

    def load_normal_map(self, job_id: str) -> bytes | None:
        """The result's tangent-space normal map (PNG), when its export baked one."""
        path = self.folder(job_id) / RESULT / NORMAL_PNG
        return path.read_bytes() if path.is_file() else None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
