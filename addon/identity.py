"""Which object a paint result belongs to, by an identity that survives renames, reopening the file and
restarting Blender (a scene's session pointers do not), and whether its mesh is still the one painted.

An object and its mesh carry a UUID in the custom property `latentforge_id` (a duplicate copies it; the
next paint gives the copy its own). A mesh's topology fingerprint (its vertex count and every polygon's
loops) says whether a result computed for it still fits it: moving vertices keeps it, deleting or adding
faces does not. At Paint the object also keeps a record of the paint (`latentforge_paint`: the job, what was
painted and through which loops), saved with the file, so a result fetched after Blender restarts finds its
object and lands on it as it would have.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import bpy
import numpy as np

from .jobs import Job, PaintPlan

ID_PROPERTY = "latentforge_id"
RECORD_PROPERTY = "latentforge_paint"


def stamp(datablock: bpy.types.ID, others: Any) -> str:
    """The datablock's identity; a new one when it has none or shares it with another of `others` (a copy)."""
    current = datablock.get(ID_PROPERTY)
    if not current or any(o != datablock and o.get(ID_PROPERTY) == current for o in others):
        datablock[ID_PROPERTY] = current = uuid.uuid4().hex
    return current


def topology(mesh: bpy.types.Mesh) -> str:
    """A fingerprint of the mesh's vertices, polygons and loops (not of where its vertices are)."""
    digest = hashlib.sha1(np.int64(len(mesh.vertices)).tobytes())
    for collection, attr in ((mesh.polygons, "loop_total"), (mesh.loops, "vertex_index")):
        values = np.empty(len(collection), np.int32)
        collection.foreach_get(attr, values)
        digest.update(values.tobytes())
    return digest.hexdigest()[:24]


def mesh_users(mesh: bpy.types.Mesh) -> list[bpy.types.Object]:
    """The objects that show this mesh (linked duplicates share one)."""
    return [o for o in bpy.data.objects if o.data == mesh]


def current_topology(obj: bpy.types.Object) -> str:
    """The object's own mesh's fingerprint, with Edit Mode's changes written back first."""
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    return topology(obj.data)


def remember(obj: bpy.types.Object, job: Job) -> None:
    """Stamp the painted object and its mesh, and keep the paint's record on the object (Paint, main thread)."""
    job.object_id = stamp(obj, bpy.data.objects)
    job.mesh_id = stamp(obj.data, bpy.data.meshes)
    job.topology, job.object_name, job.faces_then = topology(obj.data), obj.name, len(obj.data.polygons)
    plan = job.paint
    obj[RECORD_PROPERTY] = {
        "request": job.request, "job": "", "prompt": job.prompt, "mesh": job.mesh_id, "topology": job.topology,
        "faces": len(obj.data.polygons), "polygons": np.asarray(plan.polygons, np.int32),
        "slots": np.asarray(plan.slots, np.int32), "uv_map": plan.uv_map or "", "copies": plan.copies or "",
        "shared": plan.shared, "loops": np.asarray(job.loops, np.int32).ravel(),
        "anchor": [float(c) for c in job.anchor]}


def record_job(obj: bpy.types.Object | None, request: str, job_id: str) -> None:
    """The service named the job: its id goes into the record, for a Fetch after a restart."""
    record = obj.get(RECORD_PROPERTY) if obj is not None else None
    if record is not None and record.get("request") == request:
        record["job"] = job_id


def forget(obj: bpy.types.Object) -> None:
    """The result is on the object: nothing is waiting for it any more."""
    if RECORD_PROPERTY in obj:
        del obj[RECORD_PROPERTY]


def with_identity(object_id: str | None) -> list[bpy.types.Object]:
    return [o for o in bpy.data.objects if object_id and o.get(ID_PROPERTY) == object_id]


def waiting_for(job_id: str) -> bpy.types.Object | None:
    """The object in this file whose paint is waiting for job `job_id`'s result."""
    return next((o for o in bpy.data.objects if (r := o.get(RECORD_PROPERTY)) is not None and r.get("job") == job_id),
                None)


def job_from_record(obj: bpy.types.Object, scene: int, job_id: str) -> Job:
    """A Fetch's job rebuilt from the object's paint record, so its result lands as the paint's would have."""
    record = obj[RECORD_PROPERTY]
    plan = PaintPlan(np.asarray(record["polygons"], np.int64), np.asarray(record["slots"], np.int64),
                     record["uv_map"] or None, record["copies"] or None, shared=record["shared"])
    job = Job(scene=scene, task="paint", prompt=record["prompt"], job=job_id, state="queued", target=obj.session_uid,
              loops=np.asarray(record["loops"], np.int32).reshape(-1, 3), paint=plan,
              anchor=tuple(record["anchor"]))
    job.object_id, job.mesh_id, job.topology = obj.get(ID_PROPERTY), record["mesh"], record["topology"]
    job.object_name, job.faces_then = obj.name, int(record["faces"])
    return job


def resolve(job: Job) -> tuple[bpy.types.Object | None, str | None]:
    """The object a paint result belongs to, or None and why it cannot land on it (gone, ambiguous, changed)."""
    found = with_identity(job.object_id)
    same_session = [o for o in found if o.session_uid == job.target]
    if same_session:
        found = same_session
    elif len(found) > 1:  # duplicated since: the one that kept the painted mesh
        found = [o for o in found if o.data.get(ID_PROPERTY) == job.mesh_id] or found
    name = f"\u201c{job.object_name}\u201d" if job.object_name else "the painted object"
    if not found:
        return None, f"{name} is no longer in this file"
    if len(found) > 1:
        return None, f"{len(found)} objects are copies of {name} and none of them is the one painted"
    obj = found[0]
    if current_topology(obj) != job.topology:
        now = len(obj.data.polygons)
        change = f"{job.faces_then} faces then, {now} now" if now != job.faces_then else "its faces were rebuilt"
        return None, f"the mesh of \u201c{obj.name}\u201d changed since Paint ({change}): the texture fits it no more"
    return obj, None
