"""`latentforge bench --export-breakdown`: each export sub-step's time, and the export's peak memory, for an
unconverged field (a soft, noisy blob) and a converged one (a crisp shape), each export in a fresh process."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from backend.bench.probe import say
from backend.bench.run import device_info
from backend.config import merge

EXPORT_FIELDS = ("unconverged", "converged")

def toadstool_density(density: Callable[[torch.Tensor], torch.Tensor], level: float) -> Callable:
    """The field's density evaluated (so export pays its cost) but replaced by a crisp cap-on-a-stem shape, as a
    converged field's surface is: sharp where an unconverged one is a soft, noisy blob."""

    def shape(x: torch.Tensor) -> torch.Tensor:
        cap = ((x[:, 0] ** 2 + x[:, 1] ** 2) / 0.55**2 + ((x[:, 2] - 0.15) / 0.3) ** 2).sqrt() - 1
        cap = torch.maximum(cap * 0.3, 0.1 - x[:, 2])  # the cap's underside is flat
        stem = torch.maximum((x[:, 0] ** 2 + x[:, 1] ** 2).sqrt() - 0.15, x[:, 2].abs() - 0.4 + 0.2 * (x[:, 2] > 0))
        distance = torch.minimum(cap, stem)
        return density(x) * 0 + 2 * level * torch.sigmoid(-distance * 80)

    return shape

def export_breakdown_case(kind: str, device_name: str, overrides: dict) -> dict:
    """One export of a `kind` field at the export settings `overrides` (defaults if empty), in this process."""
    import resource

    from backend.events import Progress, StageStarted
    from backend.export import ExportConfig, export_asset
    from backend.mesh import Frame
    from backend.scene.nerf import LatentNeRF, NeRFConfig

    device = torch.device(device_name)
    torch.manual_seed(0)
    nerf = LatentNeRF(NeRFConfig()).to(device).eval()
    config = merge(ExportConfig(), overrides)
    density = nerf.density if kind == "unconverged" else toadstool_density(nerf.density, config.density_threshold)
    times: dict[str, float] = {}
    started: dict[str, float] = {}

    def on_event(event: object) -> None:
        if isinstance(event, StageStarted):
            started[event.stage] = time.perf_counter()
        elif isinstance(event, Progress) and event.step == event.total:
            times[event.stage.removeprefix("export: ")] = time.perf_counter() - started[event.stage]

    counted = {"points": 0}

    def counting(x: torch.Tensor) -> torch.Tensor:
        counted["points"] += len(x)
        return density(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), cpu_s()
        result = export_asset(counting, nerf.rgb_at, Frame(), config, Path(tmp) / "bench.glb", device, on_event)
        total, cpu = time.perf_counter() - start, cpu_s() - cpu_start
    # CPU seconds beside the wall time: on a shared machine the wall time says more about the neighbours
    return {"field": kind, "total_s": total, "cpu_s": cpu, "steps_s": times, "density_points": counted["points"],
            "dense_grid_points": config.grid_resolution**3, "faces": len(result.mesh.faces), "charts": result.charts,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "settings": dataclasses.asdict(config)}

def run_export_breakdown(device: torch.device, overrides: dict) -> dict:
    """Both kinds of field, each in a fresh process so that its peak memory is the export's own."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    cases = {}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for kind in EXPORT_FIELDS:
            say(f"export of an {kind} field" if kind[0] == "u" else f"export of a {kind} field")
            cases[kind] = pool.apply(export_breakdown_case, (kind, str(device), overrides))
    return {"schema": 1, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_info(device), "export": cases}
