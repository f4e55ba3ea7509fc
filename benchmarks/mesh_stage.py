"""Time per step of generate's mesh refinement stage (DMTet + differentiable rasterisation + SDS).

Builds a generate job the way the task does (TargetGuidance of the shipped toadstool), starts the DMTet grid
from the toadstool's own signed distance instead of a trained NeRF, and times the mesh stage's steps with
the loop's `train_step` at each render size. Prints a table and writes JSON.

    python benchmarks/mesh_stage.py --sizes 128 256 --grid 64 --steps 5 --out mesh-stage.json
"""

from __future__ import annotations

import argparse
import json
import time

import igl
import numpy as np
import torch

from backend.config import merge
from backend.examples import example_target
from backend.guidance.target import TargetGuidance
from backend.loop import train_step
from backend.tasks.generate import GenerateConfig, prepare_generate


def bench(size: int, grid: int, steps: int, device: str) -> dict:
    guidance = TargetGuidance.from_file(example_target(), device)
    config = merge(GenerateConfig(prompt="a toadstool"), {
        "optim": {"iters": 1}, "refine": {"iters": 0}, "loop": {"checkpoint_every": 0},
        "mesh": {"iters": steps + 1, "resolution": size, "grid_resolution": grid}})
    job = prepare_generate(config, guidance)
    dmtet = job.mesh.dmtet
    vertices = guidance.frame.to_unit(guidance.mesh.vertices).astype(np.float64)
    s, *_ = igl.signed_distance(dmtet.grid.vertices.cpu().double().numpy(), vertices, guidance.mesh.faces,
                                sign_type=igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
    with torch.no_grad():
        dmtet.sdf.copy_(torch.as_tensor(s, dtype=torch.float32))
        dmtet.initialised.fill_(1)
    stage = job.stages[-1]
    optimizer = stage.enter()
    train_step(stage, optimizer, 0)  # warm-up
    wall, cpu = [], []
    for step in range(1, steps + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        train_step(stage, optimizer, step)
        if device == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    faces = len(dmtet.surface()[1])
    return {"size": size, "grid": grid, "device": device, "faces": faces, "threads": torch.get_num_threads(),
            "wall_s_per_step": float(np.median(wall)), "cpu_s_per_step": float(np.median(cpu)),
            "grid_mib": dmtet.grid.memory_bytes() / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [bench(size, args.grid, args.steps, args.device) for size in args.sizes]
    for r in rows:
        print(f"{r['size']:4d}²  grid {r['grid']}³  {r['faces']:7,d} faces  {r['wall_s_per_step']:.3f} s wall  "
              f"{r['cpu_s_per_step']:.3f} s CPU per step ({r['threads']} threads, grid {r['grid_mib']:.0f} MiB)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
