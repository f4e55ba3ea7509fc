"""Render painted GLBs side by side with Cycles (CPU) from the same camera, for before/after pictures.

`python benchmarks/render_pair.py before.glb after.glb --out-dir renders/` writes `<name>.png` for each
input at 256² with 16 samples, seen from below the horizon so undersides show, and prints the paths.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import bpy


def render(glb: Path, out: Path, size: int, samples: int) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(glb))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    corners = [o.matrix_world @ v.co for o in meshes for v in o.data.vertices]
    lo = [min(c[k] for c in corners) for k in range(3)]
    hi = [max(c[k] for c in corners) for k in range(3)]
    center = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    extent = max(b - a for a, b in zip(lo, hi, strict=True))
    elevation, azimuth, distance = math.radians(-30.0), math.radians(35.0), 2.4 * extent
    location = (center[0] + distance * math.cos(elevation) * math.sin(azimuth),
                center[1] - distance * math.cos(elevation) * math.cos(azimuth),
                center[2] + distance * math.sin(elevation))
    bpy.ops.object.camera_add(location=location)
    camera = bpy.context.object
    target = bpy.data.objects.new("target", None)
    target.location = center
    bpy.context.scene.collection.objects.link(target)
    constraint = camera.constraints.new("TRACK_TO")
    constraint.target, constraint.track_axis, constraint.up_axis = target, "TRACK_NEGATIVE_Z", "UP_Y"
    scene = bpy.context.scene
    scene.camera = camera
    world = bpy.data.worlds.new("white")
    # Cycles lights with the world's Background node, not its viewport colour
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    scene.world = world  # flat white light from every side, undersides included
    scene.view_settings.view_transform = "Standard"  # a texture's colours as painted, not tone-mapped
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", samples, False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("glbs", type=Path, nargs="+")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for glb in args.glbs:
        out = args.out_dir / f"{glb.stem}.png"
        render(glb, out, args.size, args.samples)
        print(f"rendered {glb} → {out}")


if __name__ == "__main__":
    main()
