"""The field's own figures for `latentforge bench`: time and memory per point of one field call, and HiFA's
step split into the SDS step and what HiFA adds to it.

One field call is as many points as one training render evaluates (cameras × pixels × samples per ray),
at random positions inside the field's sphere, forward and backward. Memory is the peak of tensor storage
allocated during the call: on CUDA from the allocator's statistics, elsewhere from a dispatch mode that
follows every storage an operation allocates until it is freed. "Temporaries" are the peak less what the
call leaves behind (its output and saved tensors forward, the gradients backward).

A job's occupancy grid starts skipping after its warm-up (100 renders), and a benchmark's few steps stay
inside it; `form_field` gives the random field the density of a formed object (a ball, as the export
benchmark's) and warms the grid, so that further steps cost what a job's steps cost once skipping runs.
"""

from __future__ import annotations

import math
import statistics
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from backend.timing import wall

FIELD_REPEATS = 3  # field calls timed after one untimed; the median is reported
# points of the calls whose memory is followed (a dispatch mode slows a CPU call many times): the
# encoding's temporaries are bounded per chunk, so a larger call has fewer bytes per point, not more
MEMORY_POINTS = 1 << 16


class StorageTracker(TorchDispatchMode):
    """Bytes of tensor storage allocated while active and still alive, and their peak (any device)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: allocated before, or already counted
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


class Memory:
    """Peak and remaining bytes of what runs inside `measure`, on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def measure(self, fn: Callable[[], object]) -> tuple[object, int, int]:
        """fn()'s result, the peak bytes it allocated on top of what was live, and the bytes it leaves."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return (out, torch.cuda.max_memory_allocated(self.device) - before,
                    torch.cuda.memory_allocated(self.device) - before)
        with StorageTracker() as tracker:
            out = fn()
        return out, tracker.peak, tracker.live


def points_in_ball(n: int, bound: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return (direction * torch.rand(n, 1, generator=g) ** (1 / 3) * bound).to(device)


def field_figures(job: Any, config: Any, device: torch.device) -> dict:
    """µs per point and bytes per point of one field call of `job`'s scene (a generate job)."""
    nerf, scene = job.scene.nerf, job.scene
    samples = config.render.samples + config.render.importance_samples
    n = config.optim.batch * config.resolution**2 * samples
    x = points_in_ball(n, config.nerf.bound, device)
    memory = Memory(device)
    field = scene.field(rgb=False)  # the latent stage's, where a job spends most of its steps

    def forward_backward() -> None:
        sigma, feats = field(x)
        (sigma.sum() + feats.sum()).backward()

    def call() -> float:
        return wall(forward_backward, device)[1]

    params = list(nerf.parameters())
    saved = [p.grad for p in params]
    for p in params:  # backward would otherwise add into the job's gradients, and count that as a temporary
        p.grad = None
    call()  # first call: compilation, allocator warm-up
    times = [call() for _ in range(FIELD_REPEATS)]
    x = x[:MEMORY_POINTS]
    n_memory = len(x)
    encoder_input = (x / config.nerf.bound + 1) / 2
    for p in params:
        p.grad = None
    encoded, fwd_peak, fwd_left = memory.measure(lambda: nerf.encoder(encoder_input))
    upstream = torch.ones_like(encoded)
    _, bwd_peak, bwd_left = memory.measure(lambda: encoded.backward(upstream))
    encoded = upstream = None
    with torch.no_grad():
        _, nograd_peak, nograd_left = memory.measure(lambda: nerf.encoder(encoder_input))
    _, field_peak, _ = memory.measure(lambda: field(x))
    for p, g in zip(params, saved, strict=True):
        p.grad = g
    return {
        "points": n,
        "field_us_per_point": statistics.median(times) * 1e6 / n,  # forward + backward
        "memory_points": n_memory,
        "field_call_bytes_per_point": field_peak / n_memory,  # forward with its graph
        "encoding_temp_bytes_per_point": max(fwd_peak - fwd_left, bwd_peak - bwd_left,
                                             nograd_peak - nograd_left) / n_memory,
        "encoding_bytes_per_point": {"forward_peak": fwd_peak / n_memory, "forward_left": fwd_left / n_memory,
                                     "backward_peak": bwd_peak / n_memory, "no_grad_peak": nograd_peak / n_memory},
    }


FORMED_RADIUS = 0.5  # × bound: the formed object's radius, as the export benchmark's ball


def form_field(job: Any, device: torch.device, step: Callable[[], object]) -> dict | None:
    """Shift the field's density so that it falls under the grid's threshold at `FORMED_RADIUS` from the
    centre (what a formed field's empty space does), then warm the grid: an update, a training render
    `step()` to learn the occupied fraction, and an update that sets the field's budget from it. The
    field's cost per sample is unchanged: only its values move. Returns the grid's figures, or None
    when skipping is off."""
    scene = job.scene
    grid = scene.renderer.occupancy
    if grid is None:
        return None
    nerf = scene.nerf
    edge = torch.tensor([[FORMED_RADIUS * nerf.config.bound, 0.0, 0.0]])
    with torch.no_grad():  # the output layer's density channel: exp(h + blob) = threshold on the ball's surface
        nerf.sigma_net[-1].bias[0] = math.log(grid.config.threshold) - float(nerf.blob(edge))
    field = scene.field(rgb=False)
    grid.update(field, device)
    step()
    _, seconds = wall(lambda: grid.update(field, device), device)
    update_ms = seconds * 1e3
    occupied = float((grid.density > grid.config.threshold).float().mean())
    return {"formed_radius": FORMED_RADIUS, "occupied_cells": occupied, "budget": grid.budget,
            "update_ms": update_ms, "update_every": grid.config.update_every,
            "update_ms_per_step": update_ms / grid.config.update_every}


HIFA_PARTS = ("render", "unet", "vae", "objective", "backward", "other")


def hifa_breakdown(tasks: dict[str, dict]) -> dict | None:
    """HiFA's step as the SDS step plus each part's extra time, both measured in this run."""
    if "generate-sds" not in tasks or "generate-hifa" not in tasks:
        return None
    sds, hifa = tasks["generate-sds"], tasks["generate-hifa"]
    extra = {p: hifa["parts_ms"].get(p, 0.0) - sds["parts_ms"].get(p, 0.0) for p in HIFA_PARTS}
    return {"sds_step_ms": sds["ms_per_step"], "hifa_step_ms": hifa["ms_per_step"],
            "ratio_to_sds": hifa["ms_per_step"] / sds["ms_per_step"],
            "extra_unet_calls": hifa["unet_calls_per_step"] - sds["unet_calls_per_step"],
            "extra_ms": extra}


def field_report(doc: dict) -> list[str]:
    """Lines for the bench report: the field's figures and what empty-space skipping saves."""
    lines = []
    rows = {k: r["field"] for k, r in doc["tasks"].items() if r.get("field")}
    if rows:
        head = f"{'field call':<22}{'points':>9}{'µs/pt f+b':>11}{'call B/pt':>11}{'enc tmp B/pt':>14}{'ratio':>7}"
        lines += ["", head, "-" * len(head)]
        for name, f in rows.items():
            lines.append(f"{name:<22}{f['points']:>9}{f['field_us_per_point']:>11.3f}"
                         f"{f['field_call_bytes_per_point']:>11.0f}{f['encoding_temp_bytes_per_point']:>14.0f}"
                         f"{doc['tasks'][name]['ratio']:>7.2f}")
    warm = {k: r for k, r in doc["tasks"].items() if r.get("occupancy")}
    if warm:
        head = (f"{'empty-space skipping':<22}{'cold ms':>9}{'ratio':>7}{'warm ms':>9}{'ratio':>7}"
                f"{'occupied':>10}{'budget':>8}{'update ms':>11}")
        lines += ["", head, "-" * len(head)]
        for name, r in warm.items():
            o = r["occupancy"]
            lines.append(f"{name:<22}{r['cold_ms_per_step']:>9.1f}{r['cold_ratio']:>7.2f}{r['ms_per_step']:>9.1f}"
                         f"{r['ratio']:>7.2f}{o['occupied_cells']:>10.1%}{o['budget']:>8.3f}"
                         f"{o['update_ms']:>11.1f}")
        lines.append(f"warm: the field a ball of radius {FORMED_RADIUS} × bound, the grid's update every "
                     f"{next(iter(warm.values()))['occupancy']['update_every']} steps shared out over them")
    return lines
