"""Where a finished job's result lands: on the object it was painted for, or as a new object where its sketch,
the 3D cursor or its own coordinates say; and its files, kept beside the .blend's packed copy.

A result never lands in another file than the one its job was started in, and a paint never lands on an
object that is gone or whose mesh changed since (identity.py): it is held, with the reason, for the artist
to apply where that is safe (a mesh of the same topology), import as a new object, or discard.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import identity, painting, results
from .jobs import Job


class Held(Exception):
    """The result cannot land by itself; the message says why and what the artist can do."""


def scene_by_uid(uid: int) -> bpy.types.Scene | None:
    return next((s for s in bpy.data.scenes if s.session_uid == uid), None)


def object_by_uid(uid: int) -> bpy.types.Object | None:
    return next((o for o in bpy.data.objects if o.session_uid == uid), None)


def file_problem(job: Job, load: int) -> str | None:
    """Why the open file is not the job's (another one was opened since it started), or None."""
    if job.load is None or job.load == load or (job.file and job.file == bpy.data.filepath):
        return None
    if job.file:
        return (f"this result belongs to \u201c{Path(job.file).name}\u201d, not to the file open now: open that file "
                "and press Fetch, or Import as New Object here")
    return ("this result belongs to an unsaved file that was closed since: Import as New Object to keep it here, "
            "or Discard it")


def land(context: bpy.types.Context, job: Job, event: dict[str, Any], how: str = "LAND",
         load: int = 0) -> bpy.types.Object:
    """A finished job's result in its scene. `how`: LAND (where it belongs; raises `Held` when it cannot),
    NEW (a new object where the result was made) or ACTIVE (a paint onto the active object, same topology)."""
    if how == "LAND" and (why := file_problem(job, load)):
        raise Held(why)
    if how == "NEW" or job.paint is None:
        return import_new(context, job, event)
    if how == "ACTIVE":
        target = context.active_object
        if target is None or target.type != "MESH" or identity.current_topology(target) != job.topology:
            raise ValueError("the active object's mesh is not the one painted (another topology)")
    else:
        target, why = identity.resolve(job)
        if target is None:
            raise Held(f"{why}: Import as New Object to keep the result, or Discard it")
    arrays, faces = event["arrays"], event["arrays"]["faces"]
    if arrays.get("uvs") is None or len(faces) != len(job.loops):
        raise ValueError(f"the result has {len(faces)} triangles for the {len(job.loops)} sent")
    single_user_if_asked(target, job)
    painted = painting.apply_painted(target, job, arrays["uvs"][faces], event["blobs"]["texture"],
                                     event.get("tiles", {}))
    identity.forget(painted)
    return painted


def single_user_if_asked(obj: bpy.types.Object, job: Job) -> None:
    """A mesh other objects show too gets a copy of its own first, unless the artist chose to paint them all."""
    if job.paint.shared != "SINGLE" or len(identity.mesh_users(obj.data)) < 2:
        return
    if obj.mode == "EDIT":  # a mesh is swapped in Object Mode (a partial paint goes back to Edit Mode after)
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="OBJECT")
            try:
                single_user_if_asked(obj, job)
            finally:
                bpy.ops.object.mode_set(mode="EDIT")
        return
    obj.data = obj.data.copy()
    identity.stamp(obj.data, bpy.data.meshes)


def import_new(context: bpy.types.Context, job: Job, event: dict[str, Any]) -> bpy.types.Object:
    """The result as a new object: a generate's where its sketch or the cursor was, a paint's where the painted
    object was when it was sent, a fetched one where its own coordinates say."""
    scene = scene_by_uid(job.scene) or context.scene
    arrays, blobs, tiles = event["arrays"], event["blobs"], event.get("tiles", {})
    vertices, faces, uvs = np.asarray(arrays["vertices"], dtype=np.float64), arrays["faces"], arrays.get("uvs")
    sketch = [o for uid in job.sketch if (o := object_by_uid(uid)) is not None]
    world, anchor = placement(job, vertices)
    shift = world[:1] - vertices[:1] if len(vertices) else np.zeros((1, 3))  # the placement's move
    obj = results.import_generated(scene, job.prompt, world, faces, uvs, None if tiles else blobs["texture"], anchor,
                                   sketch, normal_png=blobs.get("normal_map"), polygons=polygons(arrays),
                                   lods=levels_of_detail(arrays, blobs, shift))
    if tiles:  # a UDIM paint's UVs read the tiles
        name = results.name_from_prompt(job.prompt)
        image = painting.tiled_image(f"{name} texture", tiles)
        obj.data.materials.append(results.textured_material(name, image, results.UV_LAYER))
    return obj


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
        levels.append({"vertices": np.asarray(arrays[prefix + "vertices"], dtype=np.float64) + shift,
                       "faces": arrays[prefix + "faces"], "uvs": arrays.get(prefix + "uvs"),
                       "polygons": polygons(arrays, prefix), "normal_png": blobs.get(prefix + "normal_map"),
                       "texture_png": blobs.get(prefix + "texture")})
    return levels


def placement(job: Job, vertices: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """World-space vertices (float64) and the new object's origin. A job's arrays travel relative to its anchor
    (a sketch's or a painted mesh's centre, or the 3D cursor for a text-only result), so the result goes back
    there; a fetched one (nothing known about it) stays where it is, its origin at its centre."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if job.task == "fetch" or not len(vertices):
        center = (vertices.min(0) + vertices.max(0)) / 2 if len(vertices) else np.zeros(3)
        return vertices, tuple(float(c) for c in center)
    return vertices + np.asarray(job.anchor, dtype=np.float64), job.anchor


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
