"""Latent-Paint's known answer: PSNR over every face of a two-tone box, and CPU time per 100 steps.

Paints the box with `TargetGuidance` (the box's own colours are the answer) at a given render size,
texture size, texture filter and elevation range, and prints JSON. Not a test: run it as
`python benchmarks/paint_quality.py --filter bilinear --resolution 32`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shapes import face_texels, surface_psnr, two_tone_box  # noqa: E402

from backend.config import merge  # noqa: E402
from backend.guidance.target import TargetGuidance  # noqa: E402
from backend.tasks.paint import PaintConfig, paint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--filter", default="mipmap", choices=["mipmap", "bilinear"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--elevation", type=float, nargs=2, default=(-90.0, 90.0))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="keep the painted GLB (and PNG) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = two_tone_box()
    overrides = {"resolution": args.resolution, "texture_size": args.texture_size, "iters": args.iters,
                 "lr": args.lr, "camera": {"elevation_range": list(args.elevation)}, "loop": {"checkpoint_every": 0}}
    if hasattr(PaintConfig, "texture_filter"):  # older versions sample bilinearly only
        overrides["texture_filter"] = args.filter
    config = merge(PaintConfig(prompt="a two-tone box"), overrides)
    start = time.process_time()
    with tempfile.TemporaryDirectory() as out:
        result = paint(config, TargetGuidance(target), target.copy_with(vertex_colors=None),
                       args.out or Path(out) / "box.glb")
    cpu = time.process_time() - start
    face_colors = target.vertex_colors[target.faces].mean(1)
    flat = (target.vertices[target.faces].mean(1)[:, 2] > 0.65).nonzero()[0]  # red, away from the seam
    flat_std = result.texture[face_texels(result.mesh, args.texture_size, flat)].astype(float).std(0).mean()
    print(json.dumps({"filter": args.filter, "resolution": args.resolution, "texture_size": args.texture_size,
                      "iters": args.iters, "lr": args.lr, "elevation": list(args.elevation),
                      "psnr_all_faces_db": round(surface_psnr(result.mesh, result.texture, face_colors), 2),
                      "flat_region_std_levels": round(float(flat_std), 2),
                      "cpu_s_per_100_steps": round(100 * cpu / args.iters, 2)}))


if __name__ == "__main__":
    main()
