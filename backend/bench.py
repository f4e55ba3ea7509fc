"""`latentforge bench`: each task's step at production scale, against its U-Net calls alone, on one device.

For each task (generate with SDS, generate with HiFA, paint) the job is wired exactly as the task wires it
(`prepare_generate`, `prepare_paint`) and stepped with the loop's own `train_step`: warm-up steps (where
compilation happens), timed steps (their median), the same steps again with each part timed, peak GPU
memory, the RGB-refine stage, the export, and from those the wall time of a default job. The floor is the
U-Net alone on the same call batch (CFG's two latents per camera), CUDA-graphed on CUDA, times the calls a
step makes: no step can be faster.

Without --model it builds a Stable Diffusion architecture with random weights: compute is the same,
quality is not. Results are printed as a table and written as JSON (benchmarks/README.md names the fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend import __version__
from backend.bench_field import field_figures, field_report, form_field, hifa_breakdown
from backend.compose import compose_config
from backend.config import load_file, merge
from backend.errors import ConfigError, LatentForgeError
from backend.loop import Stage, train_step
from backend.mesh import Mesh
from backend.timing import PartTimer, Timer, untimed, wall

# name → (task, method, settings): plain CFG unless the name says Perp-Neg, so each method's cost and
# Perp-Neg's own show apart
TASKS: dict[str, tuple[str, str, dict]] = {
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
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    steps: int = 60
    warmup: int | None = None  # None: 10 on CUDA, 1 elsewhere
    refine_steps: int | None = None  # None: 10 on CUDA; 0 elsewhere (a 256² refine step needs tens of GB eager)
    export: bool = True
    arch: str = "sd15"
    model: str | None = None  # a checkpoint; None builds `arch` with random weights
    overrides: dict[str, dict] = field(default_factory=dict)  # {"generate": {...}, "paint": {...}} settings

    def resolved(self) -> BenchSettings:
        cuda = self.device.type == "cuda"
        unknown = [t for t in self.tasks if t not in TASKS]
        unknown += [k for k in self.overrides if k not in ("generate", "paint")]
        if unknown:
            raise ConfigError(f"unknown task or table {', '.join(unknown)}", f"tasks: {', '.join(TASKS)}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        warmup = self.warmup if self.warmup is not None else CUDA_WARMUP if cuda else CPU_WARMUP
        refine = self.refine_steps if self.refine_steps is not None else CUDA_REFINE_STEPS if cuda else 0
        return dataclasses.replace(self, warmup=max(warmup, 0), refine_steps=max(refine, 0))


class Probe:
    """A step's timer: counts every part's calls, and times them (exclusively) while `on`."""

    def __init__(self, device: torch.device) -> None:
        self.timer = PartTimer(device)
        self.on = False
        self.calls: Counter[str] = Counter()

    def __call__(self, name: str) -> AbstractContextManager[None]:
        self.calls[name] += 1
        return self.timer(name) if self.on else untimed(name)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def probed(*args: object, **kwargs: object) -> object:
            with self(name):
                return fn(*args, **kwargs)

        return probed


class Probed:
    """`inner` with the methods named in `parts` timed as those parts; everything else passes through."""

    def __init__(self, inner: object, probe: Probe, parts: dict[str, str]) -> None:
        self._inner, self._probe, self._parts = inner, probe, parts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        return self._probe.wrap(self._parts[name], attr) if name in self._parts else attr


def instrument(stage: Stage, probe: Probe) -> None:
    """Time the stage's render, objective (and its own model) and regularisers as parts (its guidance is
    already probed)."""
    step = stage.step
    step.render = probe.wrap("render", step.render)
    model = step.objective.trainable
    if model is not None and not hasattr(model.forward, "probed"):
        model.forward = probe.wrap("vsd_model", model.forward)
        model.forward.probed = True
    step.objective = Probed(step.objective, probe, {"losses": "objective"})
    step.regularisers = {k: (w, probe.wrap("regularisers", fn)) for k, (w, fn) in step.regularisers.items()}


def clocked(fn: Callable[[int], object], count: int, device: torch.device) -> list[float]:
    """Milliseconds of each of `count` calls fn(0 … count−1): on CUDA the GPU's time between them, so
    the host runs ahead as in a real job and only the end waits."""
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
        marks[0].record()
        for i in range(count):
            fn(i)
            marks[i + 1].record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) for a, b in zip(marks, marks[1:], strict=False)]
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def run_steps(stage: Stage, optimizer: torch.optim.Optimizer, first: int, count: int, device: torch.device,
              timer: Timer = untimed) -> list[float]:
    # the whole step is a part too: what no named part claims (camera and timestep draws, glue) is "other"
    def one(i: int) -> None:
        with timer("other"):
            train_step(stage, optimizer, first + i, timer)

    return clocked(one, count, device) if count else []


def say(message: str) -> None:
    """Progress on stderr: a run takes minutes, most of them compiling."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_gb(device: torch.device, reset: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def host_syncs(fn: Callable[[], object], device: torch.device) -> tuple[int | None, dict[str, int] | None]:
    """How many times fn() makes the host wait for the GPU, and where (CUDA only)."""
    if device.type != "cuda":
        return None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize(device)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), dict(Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs))


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

    kind, method, preset = TASKS[name]
    device, steps, warmup = settings.device, settings.steps, settings.warmup
    config = task_config(kind, method, {**preset, **settings.overrides.get(kind, {})})
    probe = Probe(device)
    probed = Probed(guidance, probe, GUIDANCE_PARTS)
    peak_gb(device, reset=True)
    job = prepare_generate(config, probed) if kind == "generate" else prepare_paint(config, probed, uv_sphere())
    stage = job.stages[0]
    instrument(stage, probe)
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


def first_stage_s(result: dict, steps: int) -> float:
    """Seconds of the first stage's steps: cold (every sample evaluated) until the occupancy grid is warm."""
    cold_ms = result["cold_ms_per_step"]
    if not cold_ms:  # no grid: every step as timed
        return steps * result["ms_per_step"] / 1e3
    cold = min(steps, result["speed"]["occupancy"]["warmup"])
    return (cold * cold_ms + (steps - cold) * result["ms_per_step"]) / 1e3


def projection(result: dict, config: Any, load_s: float, warmup: int) -> dict:
    """A default job's wall time from this run's figures: load, compile, every step, export."""
    first, second = (config.optim.iters, config.refine.iters) if result["kind"] == "generate" else (
        config.iters, config.finetune_iters)

    def compile_s(figures: dict) -> float:
        # the warm-up beyond its steps' share is compilation and graph capture, paid once per job
        return max(0.0, figures["warmup_s"] - warmup * figures["ms_per_step"] / 1e3)

    refine = result["refine"]
    second_s = None if second and refine is None else (
        compile_s(refine) + second * refine["ms_per_step"] / 1e3 if second else 0.0)
    parts: dict[str, Any] = {"load_s": load_s, "compile_s": compile_s(result), "steps": first,
                             "steps_s": first_stage_s(result, first), "second_stage_steps": second,
                             "second_stage_s": second_s, "export_s": result["export_s"]}
    missing = (["second stage (--refine-steps 0)"] if second_s is None else []) + (
        ["export"] if result["export_s"] is None else [])
    total = None if missing else sum(v for k, v in parts.items() if k.endswith("_s"))
    return {**parts, "total_s": total, "missing": missing}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    import diffusers

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    return {"type": device.type, "name": name, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "diffusers": diffusers.__version__, "python": platform.python_version(), "latentforge": __version__,
            "cpu_threads": torch.get_num_threads()}


def run_bench(settings: BenchSettings) -> dict:
    """Every figure of one run, as the JSON document `latentforge bench` writes."""
    from backend.guidance.stable_diffusion import StableDiffusionGuidance

    settings = settings.resolved()
    device = settings.device
    say(f"loading {settings.model}" if settings.model else f"building {settings.arch} with random weights")
    if settings.model:
        guidance, load_s = wall(lambda: StableDiffusionGuidance.load(settings.model, device=device), device)
    else:
        guidance, load_s = wall(lambda: StableDiffusionGuidance.random(settings.arch, device), device)
    tasks, configs = {}, {}
    for name in settings.tasks:
        tasks[name], configs[name] = bench_task(name, guidance, settings)
    batches = {name: unet_batch(TASKS[name][0], configs[name], guidance) for name in tasks}
    # measured after the tasks, so a U-Net the steps compiled is reused rather than compiled again
    floors = {key: unet_floor(guidance, *key, settings) for key in dict.fromkeys(batches.values())}
    for name, result in tasks.items():
        floor = floors[batches[name]]["ms"] * max(result["unet_calls_per_step"], 1.0)
        result["floor_ms"], result["ratio"] = floor, result["ms_per_step"] / floor
        result["cold_ratio"] = result["cold_ms_per_step"] / floor if result["cold_ms_per_step"] else None
        result["job"] = projection(result, configs[name], load_s, settings.warmup)
    return {
        "schema": 1,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": None if settings.model else RANDOM_NOTE,
        "device": device_info(device),
        "model": {"source": settings.model or f"{settings.arch} architecture", "random_weights": not settings.model,
                  "dtype": str(guidance.unet.dtype).removeprefix("torch."), "load_s": load_s},
        "settings": {"steps": settings.steps, "warmup": settings.warmup, "refine_steps": settings.refine_steps,
                     "export": settings.export, "tasks": settings.tasks, "arch": settings.arch,
                     "model": settings.model, "prompt": PROMPT, "overrides": settings.overrides},
        "unet_floor": list(floors.values()),
        "tasks": tasks,
        "hifa_breakdown": hifa_breakdown(tasks),
        "extra_over_sds": extra_over_sds(tasks),
    }


def extra_over_sds(tasks: dict[str, dict]) -> dict | None:
    """Each other generate task's step as generate-sds's (plain CFG) plus each part's extra, same run."""
    if "generate-sds" not in tasks:
        return None
    sds = tasks["generate-sds"]
    out = {}
    for name, r in tasks.items():
        if r["kind"] != "generate" or name == "generate-sds":
            continue
        out[name] = {"step_ms": r["ms_per_step"], "ratio_to_sds": r["ms_per_step"] / sds["ms_per_step"],
                     "extra_ms": {p: r["parts_ms"][p] - sds["parts_ms"][p] for p in PARTS},
                     "objective_parameters": r["objective_parameters"]}
    return out or None


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def report(doc: dict) -> str:
    """The run as two readable tables: the summary and where each step's time goes."""
    dev = doc["device"]
    lines = [f"latentforge bench on {dev['name']} ({dev['type']}), torch {dev['torch']}, diffusers {dev['diffusers']}, "
             f"{doc['model']['source']} in {doc['model']['dtype']}"]
    if doc["note"]:
        lines.append(f"{doc['note']}")
    head = f"{'task':<22}{'ms/step':>9}{'floor':>8}{'ratio':>7}{'steps/s':>9}{'peak GB':>9}{'refine ms':>11}" \
           f"{'export s':>10}{'job s':>9}"
    lines += ["", head, "-" * len(head)]
    for name, r in doc["tasks"].items():
        refine = r["refine"]["ms_per_step"] if r["refine"] else None
        lines.append(f"{name:<22}{r['ms_per_step']:>9.1f}{r['floor_ms']:>8.1f}{r['ratio']:>7.2f}{r['steps_per_s']:>9.2f}"
                     f"{_fmt(r['peak_memory_gb'], '.2f'):>9}{_fmt(refine):>11}{_fmt(r['export_s']):>10}"
                     f"{_fmt(r['job']['total_s'], '.0f'):>9}")
    head = f"{'ms per part':<22}" + "".join(f"{p:>13}" for p in PARTS)
    lines += ["", head, "-" * len(head)]
    for name, r in doc["tasks"].items():
        lines.append(f"{name:<22}" + "".join(f"{r['parts_ms'][p]:>13.2f}" for p in PARTS))
    floors = ", ".join(f"{f['ms']:.2f} ms ({f['method']}, batch {f['batch']}, {f['latent']}²)"
                       for f in doc["unet_floor"])
    lines += field_report(doc)
    for name, extra in (doc.get("extra_over_sds") or {}).items():
        parts = ", ".join(f"{p} {ms:+.1f}" for p, ms in extra["extra_ms"].items() if abs(ms) >= 0.05) or "nothing"
        calls = doc["tasks"][name]["unet_calls_per_step"] - doc["tasks"]["generate-sds"]["unet_calls_per_step"]
        parts += " ms" + (f" ({calls:+.0f} U-Net calls)" if calls else "")
        count = extra["objective_parameters"]
        trained = f", training {count:,} more parameters" if count else ""
        sds_ms = doc["tasks"]["generate-sds"]["ms_per_step"]
        lines.append(f"{name} = generate-sds {sds_ms:.1f} ms + {parts} = {extra['step_ms']:.1f} ms, "
                     f"{extra['ratio_to_sds']:.2f}× SDS{trained}")
    lines += ["", f"U-Net floor per call: {floors}"]
    missing = {m for r in doc["tasks"].values() for m in r["job"]["missing"]}
    if missing:
        lines.append(f"job time not projected where not measured: {', '.join(sorted(missing))}")
    return "\n".join(lines)


def default_out(device: torch.device, tasks: list[str], config: str | None) -> Path:
    """benchmarks/bench-<device>[-<tasks>][-<config file's name>].json: runs of different scope never collide."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    parts = [name] + ([] if sorted(tasks) == sorted(TASKS) else ["+".join(tasks)])
    parts += [Path(config).stem] if config else []
    return Path("benchmarks") / ("bench-" + "-".join(re.sub(r"[^a-z0-9+]+", "-", p.lower()).strip("-") for p in parts)
                                 + ".json")


def cmd_bench(args: argparse.Namespace) -> int:
    from backend.cli import pick_device

    if args.export_breakdown:
        return cmd_export_breakdown(args)
    device = pick_device(args.device)
    overrides = load_file(args.config) if args.config else {}
    settings = BenchSettings(device, [t.strip() for t in args.tasks.split(",") if t.strip()], args.steps, args.warmup,
                             args.refine_steps, not args.no_export, args.arch, args.model, overrides)
    print(f"latentforge bench: {', '.join(settings.tasks)} on {device}"
          f"{'' if args.model else f' ({args.arch}, {RANDOM_NOTE})'}", file=sys.stderr)
    doc = run_bench(settings)
    out = Path(args.out) if args.out else default_out(device, settings.tasks, args.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(report(doc))
    print(f"\nwrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` to the `latentforge` parser."""
    from backend.devices import DEVICES, device_arg
    from backend.guidance.random_sd import ARCHS

    b = sub.add_parser("bench", help="time each task's step at production scale against its U-Net calls alone")
    b.add_argument("--device", type=device_arg, default="auto", help=f"{DEVICES} (default auto)")
    b.add_argument("--steps", type=int, default=60, help="timed steps per task; the median is reported (default 60)")
    b.add_argument("--warmup", type=int, help="untimed steps first, where compilation happens "
                                              f"(default {CUDA_WARMUP} on CUDA, {CPU_WARMUP} on a CPU)")
    b.add_argument("--refine-steps", type=int, help=f"timed RGB-refine steps for the job projection (default "
                                                    f"{CUDA_REFINE_STEPS} on CUDA, 0 on a CPU)")
    b.add_argument("--model", help="a Stable Diffusion checkpoint (hub id, diffusers folder or .safetensors); "
                                   "without it, --arch with random weights")
    b.add_argument("--arch", choices=sorted(ARCHS), default="sd15",
                   help="the architecture built with random weights (default sd15)")
    b.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)} (default all)")
    b.add_argument("--config", help="a JSON or TOML file with [generate] and/or [paint] tables of settings")
    b.add_argument("--no-export", action="store_true", help="skip timing the export (no job time is projected)")
    b.add_argument("--export-breakdown", action="store_true",
                   help="time only the export, sub-step by sub-step, for an unconverged and a converged field at "
                        "the default export settings (or the --config file's [export] table)")
    b.add_argument("--out", help="the JSON results (default benchmarks/bench-<device>.json, with the tasks and the "
                                 "config file's name added when given)")
    b.set_defaults(func=cmd_bench)


# --- export breakdown: each export sub-step's time, and the export's peak memory, per kind of field ---------

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


def export_breakdown_report(doc: dict) -> str:
    cases = doc["export"]
    steps = list(next(iter(cases.values()))["steps_s"])
    head = f"{'export s':<22}" + "".join(f"{kind:>14}" for kind in cases)
    lines = [f"export breakdown on {doc['device']['name']} ({doc['device']['type']})", "", head, "-" * len(head)]
    for step in steps:
        lines.append(f"{step:<22}" + "".join(f"{c['steps_s'].get(step, 0.0):>14.2f}" for c in cases.values()))
    rows = [("total", "total_s", ".2f"), ("CPU seconds", "cpu_s", ".1f"), ("peak RSS GB", "peak_rss_gb", ".2f"),
            ("density points", "density_points", ","), ("dense grid points", "dense_grid_points", ","),
            ("faces", "faces", ","), ("UV charts", "charts", ",")]
    for label, key, spec in rows:
        lines.append(f"{label:<22}" + "".join(f"{format(c[key], spec):>14}" for c in cases.values()))
    if any(c["peak_gpu_gb"] is not None for c in cases.values()):
        lines.append(f"{'peak GPU GB':<22}" + "".join(f"{_fmt(c['peak_gpu_gb'], '.2f'):>14}" for c in cases.values()))
    return "\n".join(lines)


def cmd_export_breakdown(args: argparse.Namespace) -> int:
    from backend.cli import pick_device

    device = pick_device(args.device)
    overrides = load_file(args.config).get("export", {}) if args.config else {}
    print(f"latentforge bench --export-breakdown on {device}", file=sys.stderr)
    doc = run_export_breakdown(device, overrides)
    out = Path(args.out) if args.out else Path("benchmarks") / f"export-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(export_breakdown_report(doc))
    print(f"\nwrote {out}")
    return 0
