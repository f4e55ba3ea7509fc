"""Where a finished job's result lands: on the object it was painted for, or as a new object where its sketch,
the 3D cursor or its own coordinates say; and its files, kept beside the .blend's packed copy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import painting, results
from .jobs import Job


def scene_by_uid(uid: int) -> bpy.types.Scene | None:
    return next((s for s in bpy.data.scenes if s.session_uid == uid), None)


def object_by_uid(uid: int) -> bpy.types.Object | None:
    return next((o for o in bpy.data.objects if o.session_uid == uid), None)


def land(context: bpy.types.Context, job: Job, event: dict[str, Any]) -> bpy.types.Object:
    """A finished job's result in its scene: the painted object it was painted for, or a new object."""
    scene = scene_by_uid(job.scene) or context.scene
    arrays, texture = event["arrays"], event["blobs"]["texture"]
    vertices, faces, uvs = np.asarray(arrays["vertices"], dtype=np.float32), arrays["faces"], arrays.get("uvs")
    target = object_by_uid(job.target) if job.target is not None else None
    if target is not None and uvs is not None and job.paint is not None and len(faces) == len(job.loops):
        return painting.apply_painted(target, job, uvs[faces], texture, event.get("tiles", {}))
    sketch = [o for uid in job.sketch if (o := object_by_uid(uid)) is not None]
    world, anchor = placement(job, vertices)
    shift = world[:1] - vertices[:1] if len(vertices) else np.zeros((1, 3), np.float32)  # the placement's move
    return results.import_generated(scene, job.prompt, world, faces, uvs, texture, anchor, sketch,
                                    normal_png=event["blobs"].get("normal_map"), polygons=polygons(arrays),
                                    lods=levels_of_detail(arrays, event["blobs"], shift))


def polygons(arrays: dict[str, np.ndarray], prefix: str = "") -> tuple[np.ndarray, np.ndarray] | None:
    """A level's faces as polygons (real quads), when the result has them."""
    if f"{prefix}polygon_sizes" not in arrays:
        return None
    return arrays[f"{prefix}polygon_sizes"], arrays[f"{prefix}polygon_corners"]


def levels_of_detail(arrays: dict[str, np.ndarray], blobs: dict[str, bytes], shift: np.ndarray) -> list[dict]:
    """Levels 1, 2 … of a game-ready result (PROTOCOL.md's lod.<k>.*), moved as LOD0 was placed."""
    levels = []
    while f"lod.{len(levels) + 1}.vertices" in arrays:
        prefix = f"lod.{len(levels) + 1}."
        levels.append({"vertices": np.asarray(arrays[prefix + "vertices"], dtype=np.float32) + shift,
                       "faces": arrays[prefix + "faces"], "uvs": arrays.get(prefix + "uvs"),
                       "polygons": polygons(arrays, prefix), "normal_png": blobs.get(prefix + "normal_map"),
                       "texture_png": blobs.get(prefix + "texture")})
    return levels


def placement(job: Job, vertices: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """World-space vertices and the new object's origin. A sketch's result comes back in world space
    (origin: the sketch's centre); a text-only result is centred on the origin, so it moves to the 3D
    cursor; a fetched one (nothing known about it) stays where it is, its origin at its centre."""
    if job.task == "fetch" or not len(vertices):
        center = (vertices.min(0) + vertices.max(0)) / 2 if len(vertices) else np.zeros(3)
        return vertices, tuple(float(c) for c in center)
    if job.sketch:
        return vertices, job.anchor
    return vertices + np.asarray(job.anchor, dtype=np.float32), job.anchor


def save_files(folder: Path, event: dict[str, Any]) -> Path:
    """The texture and, where this computer can reach it, the GLB, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "texture.png").write_bytes(event["blobs"]["texture"])
    for tile, png in event.get("tiles", {}).items():  # a UDIM paint's tiles
        (folder / f"texture.{tile}.png").write_bytes(png)
    if glb := event.get("blobs", {}).get("glb"):
        (folder / "asset.glb").write_bytes(glb)
    elif (path := event.get("glb_path")) and Path(path).is_file():  # a local server's own copy
        shutil.copyfile(path, folder / "asset.glb")
    return folder
