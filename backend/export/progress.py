"""Export's sub-steps as progress events, with an ETA that covers what is left of the export.

Each sub-step is a stage of its own, `export: NAME`, announced with its total and ended at it. Before
anything is measured the ETA comes from the settings (`estimate_export_s`); once a sub-step has run, the
ratio of its measured to its estimated time rescales what is left, so a slow field or device shows at once.
"""

from __future__ import annotations

import time

from backend.events import EventSink, Progress, StageStarted, ignore
from backend.export.config import ExportConfig

SUBSTEPS = ("coarse density", "surface density", "marching cubes", "cleanup", "simplify", "unwrap", "bake", "write")
STAGE_PREFIX = "export: "
MIN_ETA_S = 0.1  # work remains until the result is handed back: the ETA never reads 0 before it

# Seconds per field point (density, or one colour-stencil point) and per output face for the mesh steps,
# measured on a 2-core CPU with the default hash-grid NeRF; a GPU is taken as 50× faster for the field.
CPU_POINT_S = 12e-6
GPU_POINT_S = CPU_POINT_S / 50
FACE_S = {"marching cubes": 2e-6, "cleanup": 20e-6, "simplify": 10e-6, "unwrap": 100e-6, "write": 5e-6}
SURFACE_FRACTION = 0.12  # of the dense grid's nodes that a smooth surface's band refines
SURFACE_FACES_PER_CELL = 0.5  # marching-cubes faces per grid cell, as a fraction of the grid's faces
COVERED_TEXELS = 0.5  # fraction of the texture an atlas covers
STENCIL = 2  # colour points per texel


def estimate_substeps_s(config: ExportConfig, device_type: str) -> dict[str, float]:
    """Seconds each export sub-step is expected to take at `config` on a device of `device_type`."""
    point_s = CPU_POINT_S if device_type == "cpu" else GPU_POINT_S
    r = config.grid_resolution
    coarse = (r // 4 + 1) ** 3
    raw_faces = SURFACE_FACES_PER_CELL * 6 * r**2  # a surface crossing about a sixth of the grid's area
    faces = min(raw_faces, config.max_faces)
    return {
        "coarse density": coarse * point_s,
        "surface density": SURFACE_FRACTION * r**3 * point_s,
        "marching cubes": r**3 * 5e-9 + raw_faces * FACE_S["marching cubes"],
        "cleanup": raw_faces * FACE_S["cleanup"],
        "simplify": raw_faces * FACE_S["simplify"],
        "unwrap": faces * FACE_S["unwrap"],
        "bake": COVERED_TEXELS * config.texture_size**2 * STENCIL * point_s,
        "write": faces * FACE_S["write"] + config.texture_size**2 * 2e-7,
    }


def estimate_export_s(config: ExportConfig, device_type: str) -> float:
    """The whole export's expected seconds: what a job's ETA adds after its last optimisation step."""
    return sum(estimate_substeps_s(config, device_type).values())


def estimate_texture_export_s(texture_size: int, device_type: str) -> float:
    """Expected seconds to decode, fill and write a painted texture of `texture_size`² texels."""
    return texture_size**2 * (5e-6 if device_type == "cpu" else 1e-7) + 0.5


class ExportProgress:
    """Reports export sub-steps to an event sink as stages `export: NAME`, each ending at its total."""

    def __init__(self, on_event: EventSink | None, plan: dict[str, float]) -> None:
        self.on_event = on_event or ignore
        self.plan = dict(plan)
        self.scale = 1.0  # measured / estimated time of the sub-steps done so far
        self.done_estimate = self.done_measured = 0.0
        self.name, self.total, self.step, self.started = "", 1, 0, time.perf_counter()

    def start(self, name: str, total: int = 1) -> None:
        self.name, self.total, self.step, self.started = name, max(1, int(total)), 0, time.perf_counter()
        self.on_event(StageStarted(STAGE_PREFIX + name, self.total))

    def advance(self, steps: int = 1) -> None:
        """`steps` more of the current sub-step are done (it ends when its total is reached)."""
        self.step = min(self.total, self.step + steps)
        if self.step == self.total:
            self.done_measured += time.perf_counter() - self.started
            self.done_estimate += self.plan.get(self.name, 0.0)
            if self.done_estimate > 0:
                self.scale = max(self.done_measured, 1e-3) / self.done_estimate
        self.on_event(Progress(STAGE_PREFIX + self.name, self.step, self.total, eta_s=self.eta_s()))

    def finish(self) -> None:
        """End the current sub-step at its total."""
        if self.step < self.total:
            self.advance(self.total - self.step)

    def eta_s(self) -> float:
        names = list(self.plan)
        later = names[names.index(self.name) + 1:] if self.name in names else []
        current = 0.0 if self.step >= self.total else self.plan.get(self.name, 0.0) * (1 - self.step / self.total)
        return max(MIN_ETA_S, self.scale * (current + sum(self.plan[n] for n in later)))
