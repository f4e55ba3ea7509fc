"""What the service can run: a registry of tasks, each checked in the service and run in a worker.

`TASKS` maps a submit's task name to `(spec, guidance, job_dir, on_event, cancel) -> ExportResult`.
`CHECKS` holds the matching validation the service runs before a job is accepted, so a bad setting is
refused to the client at once rather than failing later in a worker.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from backend.config import from_dict, merge
from backend.errors import ConfigError, LatentForgeError
from backend.events import EventSink
from backend.export import ExportResult
from backend.guidance.base import Guidance
from backend.mesh import Frame, Mesh, validate_mesh
from backend.methods import method_overrides
from backend.presets import preset_overrides
from backend.service import schema
from backend.service.protocol import a_or_an
from backend.tasks.generate import GenerateConfig, generate

OUTPUT_NAME = "asset.glb"


class UnsupportedTask(LatentForgeError):
    code = "unsupported_task"


class NotReexportable(LatentForgeError):
    code = "not_reexportable"


@dataclass
class JobSpec:
    """A submit's fields (prompt, negative, method, seed, iterations, preset, model, overrides) and arrays."""

    task: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def from_submit(fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> JobSpec:
        spec = {k: v for k, v in fields.items() if k not in ("id", "watch")}
        return JobSpec(spec["task"], spec, dict(arrays))

    def mesh(self, what: str) -> Mesh:
        return validate_mesh(Mesh(self.arrays["vertices"], self.arrays["faces"], self.arrays.get("uvs")), what)


TaskFn = Callable[[JobSpec, Guidance, Path, EventSink, threading.Event], ExportResult]


def _nested(fields: dict[str, Any], mapping: dict[str, str]) -> dict:
    """Submit fields → nested config overrides, e.g. iterations → {"optim": {"iters": ...}}."""
    out: dict = {}
    for key, path in mapping.items():
        if key in fields:
            *parents, leaf = path.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = fields[key]
    return out




def _method(spec: JobSpec, config_type: type) -> dict:
    """The overrides of the job's method: its `method` field, else the one its overrides name, else SDS."""
    objective = spec.fields.get("overrides", {}).get("objective")
    named = objective.get("name") if isinstance(objective, dict) else None
    return method_overrides(str(spec.fields.get("method") or named or "sds"), config_type)


def generate_config(spec: JobSpec) -> GenerateConfig:
    """Defaults, the method's defaults, the quality preset, the submit's fields, then its `overrides`."""
    config = merge(from_dict(GenerateConfig, {}), _method(spec, GenerateConfig))
    config = merge(config, preset_overrides(spec.fields.get("preset", "standard")))
    config = merge(config, _nested(spec.fields, schema.SPEC_FIELDS["generate"]))
    return merge(config, spec.fields.get("overrides", {}))


def _check_generate(spec: JobSpec) -> None:
    from backend.objectives import OBJECTIVES

    schema.check_overrides(spec.fields.get("overrides", {}), GenerateConfig)
    config = generate_config(spec)
    config.validate()
    schema.check_ceilings(config, "generate")
    if config.objective.name not in OBJECTIVES:  # overrides can name an objective no method provides
        raise ConfigError(f"unknown method {config.objective.name!r}", f"choose one of {', '.join(OBJECTIVES)}")
    if "vertices" in spec.arrays:
        Frame.fit(spec.mesh("sketch").vertices)  # a sketch with no extent cannot place anything


def _run_generate(spec: JobSpec, guidance: Guidance, job_dir: Path, on_event: EventSink,
                  cancel: threading.Event) -> ExportResult:
    # a sketch both shapes the field (Sketch-Shape loss) and places the asset where the sketch was
    sketch = spec.mesh("sketch") if "vertices" in spec.arrays else None
    return generate(generate_config(spec), guidance, job_dir / OUTPUT_NAME, sketch=sketch, on_event=on_event,
                    cancel=cancel, job_dir=job_dir)


def reexport_spec(fields: dict[str, Any], export: dict[str, Any], checkpoint: dict | None) -> dict[str, Any]:
    """The spec that exports a generate job's trained field again: its own, with `export` settings merged
    into its overrides. `checkpoint` is the {"stage", "step"} of the job's saved checkpoint; it must be
    the one saved after the last optimisation stage, so that the job resumes straight into its export."""
    spec = JobSpec(str(fields.get("task")), fields)
    if spec.task != "generate":
        raise NotReexportable(f"{a_or_an(spec.task)} job has no field to export again", "submit the job again")
    overrides = dict(fields.get("overrides") or {})
    overrides["export"] = {**(overrides.get("export") or {}), **export}
    changed = JobSpec(spec.task, {**fields, "overrides": overrides})
    _check_generate(changed)  # the export settings obey every limit a submit's do
    config = generate_config(changed)
    trained = {"stage": 1 + (config.refine.iters > 0), "step": 0}
    if checkpoint != trained:
        raise NotReexportable("the job did not finish its optimisation, so it has no trained field to export "
                              "again", "submit the job again")
    return changed.fields


def _paint_module() -> ModuleType:
    try:
        return importlib.import_module("backend.tasks.paint")
    except ModuleNotFoundError as exc:
        if exc.name != "backend.tasks.paint":
            raise
        raise UnsupportedTask("this service cannot paint meshes yet (its version has no paint task)",
                              "update the service, or submit a generate job") from None


def paint_config(spec: JobSpec, module: ModuleType) -> Any:
    """Defaults, the method's defaults, the submit's fields, then its `overrides` (quality presets describe
    generate jobs only)."""
    preset_overrides(spec.fields.get("preset", "standard"))  # still refuse an unknown preset name
    config = merge(from_dict(module.PaintConfig, {}), _method(spec, module.PaintConfig))
    config = merge(config, _nested(spec.fields, schema.SPEC_FIELDS["paint"]))
    return merge(config, spec.fields.get("overrides", {}))


def _check_paint(spec: JobSpec) -> None:
    mesh = spec.mesh("mesh to paint")  # the arrays are checked in full whether or not paint is available
    module = _paint_module()
    schema.check_overrides(spec.fields.get("overrides", {}), module.PaintConfig)
    config = paint_config(spec, module)
    config.validate()
    schema.check_ceilings(config, "paint")
    # UDIM tiles, the texture's size and the look of the faces, as the job will read them
    module.plan_texture(config, mesh, spec.arrays.get("selected_faces"), _appearance(spec))


def _appearance(spec: JobSpec) -> Any:
    from backend.tasks.appearance import Appearance

    return Appearance.from_wire(spec.arrays)


def _run_paint(spec: JobSpec, guidance: Guidance, job_dir: Path, on_event: EventSink,
               cancel: threading.Event) -> ExportResult:
    module = _paint_module()
    return module.paint(paint_config(spec, module), guidance, spec.mesh("mesh to paint"), job_dir / OUTPUT_NAME,
                        on_event=on_event, cancel=cancel, job_dir=job_dir, faces=spec.arrays.get("selected_faces"),
                        appearance=_appearance(spec))


TASKS: dict[str, TaskFn] = {"generate": _run_generate, "paint": _run_paint}
CHECKS: dict[str, Callable[[JobSpec], None]] = {"generate": _check_generate, "paint": _check_paint}


PROBES: dict[str, Callable[[], Any]] = {"paint": _paint_module}  # tasks that need code this version may lack


def available() -> list[str]:
    """The task names this service can run now."""
    names = []
    for name in TASKS:
        try:
            PROBES.get(name, lambda: None)()
        except UnsupportedTask:
            continue
        names.append(name)
    return names


def config_types() -> list[type]:
    """The config dataclass of each task this service can run now."""
    return [GenerateConfig] + ([_paint_module().PaintConfig] if "paint" in available() else [])


def check_spec(spec: JobSpec) -> None:
    """Raise the `LatentForgeError` a client should see if `spec` cannot run; return if it can."""
    if spec.task not in CHECKS:
        raise UnsupportedTask(f"unknown task {spec.task!r}", f"choose one of {', '.join(TASKS)}")
    CHECKS[spec.task](spec)
