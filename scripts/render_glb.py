"""Render a GLB with Blender's Cycles on the CPU (through the `bpy` module) to look at an asset.

    python scripts/render_glb.py asset.glb out.png [--size 256] [--samples 16] [--azimuth 30] [--elevation 20]

The camera looks at the asset's bounding box from the front (Blender's −Y side) turned by `--azimuth`
degrees, with a grey world and one sun, so that a white part reads against the background.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def lit_scene(size: int, samples: int, fov_deg: float = 40.0):  # noqa: ANN201 - a bpy Scene
    """An empty scene with a camera, one sun and a grey world, rendered by Cycles on the CPU as a PNG."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    camera.data.angle = math.radians(fov_deg)
    scene.collection.objects.link(camera)
    scene.camera = camera
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", type="SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(10), math.radians(-30))
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.35, 0.35, 0.38, 1.0)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.image_settings.file_format = "PNG"
    return scene


def frame(scene, objects, azimuth: float = 30.0, elevation: float = 20.0, margin: float = 1.1) -> None:  # noqa: ANN001
    """Point the scene's camera at the objects' bounding box from the front (−Y) turned by `azimuth` degrees."""
    from mathutils import Vector

    corners = [o.matrix_world @ Vector(c) for o in objects for c in o.bound_box]
    lo = Vector([min(c[i] for c in corners) for i in range(3)])
    hi = Vector([max(c[i] for c in corners) for i in range(3)])
    center, radius = (lo + hi) / 2, (hi - lo).length / 2
    camera = scene.camera
    distance = radius / math.sin(camera.data.angle / 2) * margin
    az, el = math.radians(azimuth), math.radians(elevation)
    camera.location = center + distance * Vector((math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az),
                                                  math.sin(el)))
    camera.rotation_euler = (center - camera.location).to_track_quat("-Z", "Y").to_euler()


def render(glb: Path, out: Path, size: int = 256, samples: int = 16, azimuth: float = 30.0,
           elevation: float = 20.0) -> None:
    import bpy

    scene = lit_scene(size, samples)
    bpy.ops.import_scene.gltf(filepath=str(glb))
    meshes = [o for o in scene.objects if o.type == "MESH"]
    if not meshes:
        raise SystemExit(f"{glb} holds no mesh")
    frame(scene, meshes, azimuth, elevation)
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("glb", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--azimuth", type=float, default=30.0)
    p.add_argument("--elevation", type=float, default=20.0)
    a = p.parse_args()
    render(a.glb.resolve(), a.out.resolve(), a.size, a.samples, a.azimuth, a.elevation)


if __name__ == "__main__":
    main()
