"""Each task's step at production scale: wired as the task wires it, stepped with the loop's own `train_step`,
timed whole and part by part, beside its U-Net calls alone (the floor)."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.bench.field import field_figures, form_field
from backend.bench.probe import Probe, Probed, clocked, host_syncs, instrument, peak_gb, run_steps, say
from backend.compose import compose_config
from backend.errors import ConfigError, LatentForgeError
from backend.mesh import Mesh
from backend.timing import wall

# name → (task, method, settings): plain CFG unless the name says Perp-Neg, so each method's cost and
# Perp-Neg's own show apart
RUNS: dict[str, tuple[str, str, dict]] = {
    "generate-sds": ("generate", "sds", {"perp_neg": "off"}),
    "generate-sds-perpneg": ("generate", "sds", {"perp_neg": "on"}),
    "generate-hifa": ("generate", "hifa", {"perp_neg": "off"}),
    "generate-vsd": ("generate", "vsd", {"perp_neg": "off"}),
    "paint": ("paint", "sds", {"perp_neg": "off"}),
}

PROMPT = "a wooden rocking chair"

RANDOM_NOTE = "random weights: compute is the same, quality is not"

# "vsd_model": VSD's own noise model (a LoRA of the U-Net, or a small U-Net), its forward calls
PARTS = ("render", "unet", "vae", "vsd_model", "objective", "regularisers", "backward", "optimiser", "other")

GUIDANCE_PARTS = {"predict_noise": "unet", "encode": "vae", "decode": "vae"}
CUDA_WARMUP, CPU_WARMUP = 10, 1
CUDA_REFINE_STEPS = 10

PART_STEPS = 20  # on CUDA, steps timed again part by part (each part boundary synchronises)


@dataclass
class BenchSettings:
    device: torch.device
    tasks: list[str] = field(default_factory=lambda: list(RUNS))
    steps: int = 60
    warmup: int | None = None  # None: 10 on CUDA, 1 elsewhere
    refine_steps: int | None = None  # None: 10 on CUDA; 0 elsewhere (a 256² refine step needs tens of GB eager)
    export: bool = True
    arch: str = "sd15"
    model: str | None = None  # a checkpoint; None builds `arch` with random weights
    overrides: dict[str, dict] = field(default_factory=dict)  # {"generate": {...}, "paint": {...}} settings

    def resolved(self) -> BenchSettings:
        cuda = self.device.type == "cuda"
        unknown = [t for t in self.tasks if t not in RUNS]
        unknown += [k for k in self.overrides if k not in ("generate", "paint")]
        if unknown:
            raise ConfigError(f"unknown task or table {', '.join(unknown)}", f"tasks: {', '.join(RUNS)}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        warmup = self.warmup if self.warmup is not None else CUDA_WARMUP if cuda else CPU_WARMUP
        refine = self.refine_steps if self.refine_steps is not None else CUDA_REFINE_STEPS if cuda else 0
        return dataclasses.replace(self, warmup=max(warmup, 0), refine_steps=max(refine, 0))

def uv_sphere(rings: int = 64, segments: int = 128) -> Mesh:
    """A UV-mapped unit sphere (16 k faces by default) for the paint benchmark: no unwrapping needed."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, rings + 1), np.linspace(0, 2 * np.pi, segments + 1), indexing="ij")
    vertices = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    uvs = np.stack([phi / (2 * np.pi), 1 - theta / np.pi], -1)
    i, j = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    a = i * (segments + 1) + j
    b, c, d = a + segments + 1, a + segments + 2, a + 1
    # counter-clockwise seen from outside; the triangle that would collapse onto a pole is left out
    faces = np.concatenate([np.stack([a, b, c], -1)[i < rings - 1], np.stack([a, c, d], -1)[i > 0]])
    return Mesh(vertices.reshape(-1, 3).astype(np.float32), faces.astype(np.int64),
                uvs=uvs.reshape(-1, 2).astype(np.float32))

def sphere_density(density: Callable[[torch.Tensor], torch.Tensor], level: float) -> Callable:
    """The field's density evaluated (so export pays its cost) but replaced by a ball of radius 0.5: random
    weights leave no surface, and marching cubes, unwrapping and baking cost what the surface makes them."""

    def ball(x: torch.Tensor) -> torch.Tensor:
        return density(x) * 0 + 2 * level * torch.sigmoid((0.5 - x.norm(dim=-1)) * 40)

    return ball

def task_config(kind: str, method: str, overrides: dict) -> Any:
    config = compose_config(kind, {"prompt": PROMPT}, overrides, method=method)
    config.validate()
    return config

def bench_task(name: str, guidance: Any, settings: BenchSettings) -> tuple[dict, Any]:
    """One task's figures, and the config it ran with."""
    from backend.tasks.generate import prepare_generate
    from backend.tasks.paint import prepare_paint

    kind, method, preset = RUNS[name]
    device, steps, warmup = settings.device, settings.steps, settings.warmup
    config = task_config(kind, method, {**preset, **settings.overrides.get(kind, {})})
    probe = Probe(device)
    probed = Probed(guidance, probe, GUIDANCE_PARTS)
    peak_gb(device, reset=True)
    job = prepare_generate(config, probed) if kind == "generate" else prepare_paint(config, probed, uv_sphere())
    stage = instrument(job.stages[0], probe)
    optimizer = stage.enter()
    say(f"{name}: {warmup} warm-up steps, then {steps} timed")
    _, warmup_s = wall(lambda: run_steps(stage, optimizer, 0, warmup, device), device)
    cuda = device.type == "cuda"
    first, cold_ms, occupancy = warmup, None, None
    if kind == "generate" and job.scene.renderer.occupancy is not None:
        # a job's first renders evaluate every sample; all its later ones skip empty space
        say(f"{name}: {steps} steps before the grid is warm, then it is warmed on a formed field")
        cold_ms = run_steps(stage, optimizer, first, steps, device)
        occupancy = form_field(job, device, lambda: run_steps(stage, optimizer, first + steps, 1, device))
        first += steps + 1
        if cuda:  # the field's new budget is a new shape: compiled again, untimed
            run_steps(stage, optimizer, first, warmup, device)
            first += warmup
    probe.calls.clear()
    probe.on = not cuda  # timing parts costs nothing on a CPU: time them in the same steps
    step_ms = run_steps(stage, optimizer, first, steps, device, probe)
    unet_calls = probe.calls["unet"] / steps
    part_steps = min(steps, PART_STEPS) if cuda else steps
    if cuda:
        probe.on = True
        run_steps(stage, optimizer, first + steps, part_steps, device, probe)
    probe.on = False
    parts = probe.timer.take()
    syncs, sync_sites = host_syncs(lambda: run_steps(stage, optimizer, first + steps, 1, device), device)
    # the grid's updates are part of a warm step's cost: one every `update_every` steps, shared out
    ms = statistics.median(step_ms) + (occupancy["update_ms_per_step"] if occupancy else 0.0)
    result: dict[str, Any] = {
        "kind": kind, "method": method,
        "ms_per_step": ms, "ms_per_step_mean": statistics.fmean(step_ms), "steps_per_s": 1e3 / ms,
        "step_ms": step_ms, "unet_calls_per_step": unet_calls, "occupancy": occupancy,
        "cold_ms_per_step": statistics.median(cold_ms) if cold_ms else None,
        "parts_ms": {p: parts.get(p, 0.0) / part_steps for p in PARTS},
        "peak_memory_gb": peak_gb(device), "host_syncs_per_step": syncs, "host_sync_sites": sync_sites,
        "warmup_s": warmup_s, "speed": dataclasses.asdict(job.speed),
        # what the objective trains beside the scene (VSD's LoRA and camera MLP)
        "objective_parameters": sum(p.numel() for g in job.objective.param_groups() for p in g["params"]),
    }
    if kind == "paint":
        from backend.render.mesh_render import rasterizer_for

        result["rasterizer"] = rasterizer_for(device).__module__.rsplit(".", 1)[-1]
    if kind == "generate":
        say(f"{name}: one field call, timed and its memory followed")
        result["field"] = field_figures(job, config, device)
    result["refine"] = bench_refine(job, settings)
    result["export_s"], result["export_error"] = bench_export(job, kind, config, settings)
    return result, config

def unet_batch(kind: str, config: Any, guidance: Any) -> tuple[int, int]:
    """(batch, latent size) of the task's U-Net calls: CFG puts each camera's latent in twice, Perp-Neg
    (its two negatives) four times."""
    from backend.tasks.distill import perp_neg_on

    per_camera = 4 if perp_neg_on(config, guidance) else 2
    return per_camera * (config.optim.batch if kind == "generate" else 1), config.resolution

def bench_refine(job: Any, settings: BenchSettings) -> dict | None:
    """The second stage (generate's RGB refine), timed for the job projection."""
    if len(job.stages) < 2 or not settings.refine_steps:
        return None
    device, warmup = settings.device, settings.warmup
    stage = job.stages[1]
    say(f"{stage.name}: {warmup} warm-up steps, then {settings.refine_steps} timed")
    peak_gb(device, reset=True)
    optimizer = stage.enter()
    _, warmup_s = wall(lambda: run_steps(stage, optimizer, 0, warmup, device), device)
    step_ms = run_steps(stage, optimizer, warmup, settings.refine_steps, device)
    ms = statistics.median(step_ms)
    return {"stage": stage.name, "ms_per_step": ms, "steps_per_s": 1e3 / ms, "step_ms": step_ms,
            "warmup_s": warmup_s, "peak_memory_gb": peak_gb(device)}

def bench_export(job: Any, kind: str, config: Any, settings: BenchSettings) -> tuple[float | None, str | None]:
    if not settings.export:
        return None, "skipped (--no-export)"
    say(f"{kind}: export")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.glb"
        try:
            if kind == "generate":
                density = sphere_density(job.scene.nerf.density, config.export.density_threshold)
                _, seconds = wall(lambda: job.export(out, density=density), settings.device)
            else:
                _, seconds = wall(lambda: job.export(out), settings.device)
        except (LatentForgeError, ImportError) as exc:  # e.g. a package the export needs is missing
            return None, f"{type(exc).__name__}: {exc}"
    return seconds, None

def unet_floor(guidance: Any, batch: int, size: int, settings: BenchSettings) -> dict:
    """The U-Net alone on one call batch: CUDA-graphed on CUDA, else as the steps ran it."""
    device, unet = settings.device, guidance.unet
    call, mode = guidance.run_unet, guidance.unet_compile_mode
    if device.type == "cuda" and mode != "reduce-overhead":
        compiled = torch.compile(unet, mode="reduce-overhead", dynamic=False)

        def call(z: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(z, t, encoder_hidden_states=h).sample

    generator = torch.Generator(device).manual_seed(0)
    z = torch.randn(batch, unet.config.in_channels, size, size, generator=generator, device=device, dtype=unet.dtype)
    hidden = torch.randn(batch, guidance.tokenizer.model_max_length, unet.config.cross_attention_dim,
                         generator=generator, device=device, dtype=unet.dtype)
    t = torch.full((batch,), 500, device=device)
    warmup = max(settings.warmup, 3) if device.type == "cuda" else settings.warmup  # graphs are captured late
    say(f"U-Net floor: batch {batch}, {size}² latents")
    with torch.no_grad():
        _, warmup_s = wall(lambda: [call(z, t, hidden) for _ in range(warmup)], device)
        times = clocked(lambda _: call(z, t, hidden), settings.steps, device)
    if device.type == "cuda":
        method = "torch.compile reduce-overhead (CUDA graphs)"
    else:
        method = "eager" if mode == "off" else f"torch.compile {mode}"
    return {"batch": batch, "latent": size, "ms": statistics.median(times), "method": method, "warmup_s": warmup_s}
