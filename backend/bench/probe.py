"""Timing a task's step part by part without changing it: the guidance and the objective behind proxies that
time the calls they pass on, the objective's own model through forward hooks, and the stage rebuilt around
the timed step (the job's own stage stays as it is)."""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.loop import Stage, train_step
from backend.timing import PartTimer, Timer, untimed


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


def time_module(module: nn.Module, probe: Probe, name: str) -> None:
    """Time every forward call of `module` as the part `name` (hooks: the module itself is unchanged)."""
    running: list[AbstractContextManager[None]] = []

    def before(_module: nn.Module, _inputs: Any) -> None:
        running.append(probe(name))
        running[-1].__enter__()

    def after(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        running.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def instrument(stage: Stage, probe: Probe) -> Stage:
    """`stage` with its render, objective (and the objective's own model) and regularisers timed as parts (its
    guidance is probed already): a copy around a copy of its step."""
    step = stage.step
    if step.objective.trainable is not None:
        time_module(step.objective.trainable, probe, "vsd_model")
    timed = dataclasses.replace(
        step, render=probe.wrap("render", step.render),
        objective=Probed(step.objective, probe, {"losses": "objective"}),
        regularisers={k: (w, probe.wrap("regularisers", fn)) for k, (w, fn) in step.regularisers.items()})
    return dataclasses.replace(stage, step=timed)


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
