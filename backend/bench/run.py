"""One bench run: every task's figures, the U-Net floor they are measured against, the machine, and a default
job's projected wall time, as the JSON document `latentforge bench` writes."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from backend import __version__
from backend.bench.field import hifa_breakdown
from backend.bench.probe import say
from backend.bench.steps import PARTS, PROMPT, RANDOM_NOTE, RUNS, BenchSettings, bench_task, unet_batch, unet_floor
from backend.timing import wall


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
    batches = {name: unet_batch(RUNS[name][0], configs[name], guidance) for name in tasks}
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

def default_out(device: torch.device, tasks: list[str], config: str | None) -> Path:
    """benchmarks/bench-<device>[-<tasks>][-<config file's name>].json: runs of different scope never collide."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    parts = [name] + ([] if sorted(tasks) == sorted(RUNS) else ["+".join(tasks)])
    parts += [Path(config).stem] if config else []
    return Path("benchmarks") / ("bench-" + "-".join(re.sub(r"[^a-z0-9+]+", "-", p.lower()).strip("-") for p in parts)
                                 + ".json")
