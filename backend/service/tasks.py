"""What the service runs: a submit's fields and arrays turned into a task's settings and inputs, checked in the
service before a job is accepted and run in a worker.

Which tasks exist is `backend.catalog.TASKS`; how settings compose is `backend.compose`, the same as the
command line's; each task's own checks and run are its module's `check_inputs` and `run_task`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.catalog import SUBMIT_SETTINGS, TASKS
from backend.compose import compose_config, config_type, task_info, task_module
from backend.errors import LatentForgeError
from backend.events import EventSink
from backend.export import ExportResult
from backend.guidance.base import Guidance
from backend.mesh import Mesh, validate_mesh
from backend.nesting import nested
from backend.reference import decode_image
from backend.service import schema
from backend.service.protocol import IMAGE_BLOB

OUTPUT_NAME = "asset.glb"
MESH_NAMES = {"sketch": "sketch", "paint": "mesh to paint"}  # a task's mesh, as errors name it


class UnsupportedTask(LatentForgeError):
    code = "unsupported_task"


class NotReexportable(LatentForgeError):
    code = "not_reexportable"


def submit_settings(task: str) -> dict[str, str]:
    """A submit's fields that are settings of `task` → dotted settings (`iterations` → the task's own)."""
    return {**SUBMIT_SETTINGS, "iterations": task_info(task).iterations}


# a submit's blobs as a task's inputs: name → decoder of its bytes into an array (the protocol has checked
# which blobs a submit may carry and their sizes)
BLOB_INPUTS = {IMAGE_BLOB: lambda data: decode_image(data, "the reference image", ("PNG",))}


@dataclass
class JobSpec:
    """A submit's fields (prompt, negative, method, seed, iterations, preset, model, overrides), arrays and blobs
    (its reference image)."""

    task: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    @staticmethod
    def from_submit(fields: dict[str, Any], arrays: dict[str, np.ndarray],
                    blobs: dict[str, bytes] | None = None) -> JobSpec:
        spec = {k: v for k, v in fields.items() if k not in ("id", "watch", "variants", "draft_iterations")}
        return JobSpec(spec["task"], spec, dict(arrays), dict(blobs or {}))

    def inputs(self) -> dict[str, np.ndarray]:
        """What the task's `check_inputs` and `run_task` read: the arrays, and each blob decoded (the reference
        image's PNG as its pixels, under `image`); `InputError` for a blob that does not decode."""
        return {**self.arrays, **{name: BLOB_INPUTS[name](data) for name, data in self.blobs.items()}}

    def config(self) -> Any:
        """Defaults, the method's defaults, the quality preset, the submit's fields, then its `overrides`; a
        variant's draft (`draft`: its first-stage steps) on the draft schedule (see `backend.service.variants`)."""
        return compose_config(self.task, nested(self.fields, submit_settings(self.task)),
                              self.fields.get("overrides", {}), method=self.fields.get("method"),
                              preset=self.fields.get("preset"), draft=self.fields.get("draft"))

    def mesh(self) -> Mesh | None:
        """The task's mesh (a sketch, the mesh to paint), validated, or None when the submit carries none."""
        if "vertices" not in self.arrays:
            return None
        what = MESH_NAMES[task_info(self.task).mesh]
        return validate_mesh(Mesh(self.arrays["vertices"], self.arrays["faces"], self.arrays.get("uvs")), what)


def check_spec(spec: JobSpec) -> None:
    """Raise the `LatentForgeError` a client should see if `spec` cannot run; return if it can."""
    if spec.task not in TASKS:
        raise UnsupportedTask(f"unknown task {spec.task!r}", f"choose one of {', '.join(TASKS)}")
    mesh = spec.mesh()  # the arrays are checked in full first
    config = spec.config()
    schema.check_overrides(spec.fields.get("overrides", {}), type(config))
    config.validate()
    schema.check_ceilings(config, submit_settings(spec.task))
    task_module(spec.task).check_inputs(config, mesh, spec.inputs())


def run_spec(spec: JobSpec, guidance: Guidance, job_dir: Path, on_event: EventSink,
             cancel: threading.Event) -> ExportResult:
    """Run a checked spec in `job_dir` (checkpoints, and the asset as `OUTPUT_NAME`)."""
    return task_module(spec.task).run_task(spec.config(), guidance, spec.mesh(), spec.inputs(),
                                           job_dir / OUTPUT_NAME, on_event=on_event, cancel=cancel, job_dir=job_dir)


def reexport_spec(fields: dict[str, Any], export: dict[str, Any], checkpoint: dict | None) -> dict[str, Any]:
    """The spec that exports a generate job's trained field again: its own, with `export` settings merged
    into its overrides. `checkpoint` is the {"stage", "step"} of the job's saved checkpoint; it must be
    the one saved after the last optimisation stage, so that the job resumes straight into its export."""
    task = str(fields.get("task"))
    if task != "generate":
        raise NotReexportable(f"only a generate job has a trained field to export again, not this {task} job",
                              "submit the job again")
    overrides = dict(fields.get("overrides") or {})
    overrides["export"] = {**(overrides.get("export") or {}), **export}
    changed = JobSpec(task, {**fields, "overrides": overrides})
    check_spec(changed)  # the export settings obey every limit a submit's do
    config = changed.config()
    trained = {"stage": 1 + (config.refine.iters > 0), "step": 0}
    if checkpoint != trained:
        raise NotReexportable("the job did not finish its optimisation, so it has no trained field to export "
                              "again", "submit the job again")
    return changed.fields


def config_types() -> list[type]:
    """The config dataclass of each task this service runs."""
    return [config_type(name) for name in TASKS]
