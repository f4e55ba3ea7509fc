"""Scene geometry out: selected objects as world-space triangle arrays for the service.

Objects are evaluated through the depsgraph so modifiers count, triangulated with Blender's own
loop triangles (no edit to the object), and read with `foreach_get` into numpy in one call per array.
World coordinates are kept in float64: the operators send them relative to the selection's centre, so an
asset far from the origin keeps its precision. Every part's triangles are sent wound outward: a part
mirrored by a negative scale, or a closed mesh whose normals point inward, is turned around, or the
service's inside test would take its inside for outside.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import bpy
import numpy as np

# object types as the artist knows them
OBJECT_KINDS = {"CURVE": "a curve", "SURFACE": "a surface", "META": "a metaball", "FONT": "a text object",
                "CURVES": "a hair curves object", "POINTCLOUD": "a point cloud", "VOLUME": "a volume",
                "GPENCIL": "a grease pencil", "GREASEPENCIL": "a grease pencil", "ARMATURE": "an armature",
                "LATTICE": "a lattice", "EMPTY": "an empty", "LIGHT": "a light", "LIGHT_PROBE": "a light probe",
                "CAMERA": "a camera", "SPEAKER": "a speaker"}


@dataclass
class TriangleMesh:
    """World-space triangles. `uvs` is per corner ([F, 3, 2]), as loops are in Blender."""

    vertices: np.ndarray  # [V, 3] float64, world space
    faces: np.ndarray  # [F, 3] int32, indices into vertices
    uvs: np.ndarray | None = None  # [F, 3, 2] float32
    loops: np.ndarray | None = None  # [F, 3] int32: the original mesh's loop of each corner
    polygons: np.ndarray | None = None  # [F] int32: the original mesh's polygon each triangle comes from
    uv_maps: dict[str, np.ndarray] = field(default_factory=dict)  # every UV map's [F, 3, 2], by name
    render_uv_map: str | None = None  # the UV map materials read when they name none (the active render one)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def center(self) -> np.ndarray:
        lo, hi = self.bounds()
        return (lo + hi) / 2


def is_image_empty(obj: bpy.types.Object) -> bool:
    """Blender's reference image (Add › Image › Reference): an empty that shows an image."""
    return obj.type == "EMPTY" and obj.empty_display_type == "IMAGE"


def sent_objects(objects: Iterable[bpy.types.Object]) -> list[bpy.types.Object]:
    """The selection a job sends as geometry: Image Empties give it its reference image instead."""
    return [obj for obj in objects if not is_image_empty(obj)]


def front_yaw(obj: bpy.types.Object | None) -> float:
    """Where an object's front (its local −Y, as in Blender's front view) faces in the scene: degrees
    counter-clockwise about +Z from −Y. 0 for none, or for an object lying on its front."""
    if obj is None:
        return 0.0
    front = -np.array(obj.matrix_world, dtype=np.float64)[:3, 1]
    if np.hypot(front[0], front[1]) < 1e-6:
        return 0.0
    return round(float(np.degrees(np.arctan2(front[0], -front[1]))), 2)


def front_of(context: bpy.types.Context) -> float:
    """The job's front: the active (else the first selected) object's, or the world's for Text Only."""
    if context.scene.latentforge.mode == "TEXT":
        return 0.0
    selected = sent_objects(context.selected_objects)
    active = context.active_object
    return front_yaw(active if active in selected else (selected[0] if selected else None))


def front_label(yaw: float) -> str:
    """The panel's line about which way is front."""
    axes = {0.0: "−Y", 90.0: "+X", 180.0: "+Y", -180.0: "+Y", -90.0: "−X"}
    where = axes.get(yaw, f"{yaw:.0f}° from −Y")
    return f"Front faces {where}" + (" (Blender's front view)" if yaw == 0.0 else "")


def selection_problem(objects: Sequence[bpy.types.Object], single: bool = False) -> str | None:
    """Why these objects cannot be sent (a sentence for the user), or None when they can."""
    if not objects:
        return "Nothing is selected: select the mesh objects to use" if not single else "Select one mesh object"
    if single and len(objects) != 1:
        return f"{len(objects)} objects are selected: select exactly one mesh to paint"
    for obj in objects:
        if obj.type != "MESH":
            kind = OBJECT_KINDS.get(obj.type, f"an object of type {obj.type.lower()}")
            return f"\"{obj.name}\" is {kind}, not a mesh: select mesh objects only"
    return None


def _read(collection: bpy.types.bpy_prop_collection, attr: str, width: int, dtype: type) -> np.ndarray:
    out = np.empty(len(collection) * width, dtype=dtype)
    collection.foreach_get(attr, out)
    return out.reshape(-1, width) if width > 1 else out


def modifier_problem(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> str | None:
    """Why a paint of `obj` cannot be mapped back onto its own faces: modifiers that add or remove faces."""
    if obj.type != "MESH":
        return None
    evaluated = obj.evaluated_get(depsgraph)
    if obj.mode == "EDIT":  # the evaluated object holds no mesh of its own then: make the one a paint would send
        import bmesh

        edit = bmesh.from_edit_mesh(obj.data)
        own = (len(edit.faces), sum(len(f.loops) for f in edit.faces))
        mesh = evaluated.to_mesh()
        sent = (len(mesh.polygons), len(mesh.loops))
        evaluated.to_mesh_clear()
    else:
        own = (len(obj.data.polygons), len(obj.data.loops))
        sent = (len(evaluated.data.polygons), len(evaluated.data.loops))
    return None if sent == own else modifier_message(obj)


def modifier_message(obj: bpy.types.Object) -> str:
    names = ", ".join(m.name for m in obj.modifiers if m.show_viewport) or "its modifiers"
    return (f"\"{obj.name}\" has modifiers that change its faces ({names}): apply them, or turn them off in the "
            "viewport, to paint it")


def outward(world: np.ndarray, faces: np.ndarray, mirrored: bool) -> bool:
    """Whether a part's triangles must be turned around to face outward: it is mirrored (a negative scale), or it
    is closed (every edge shared by two triangles) and encloses a negative signed volume."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    if len(faces) and (counts == 2).all():
        a, b, c = (world[faces[:, i]] - world.mean(0) for i in range(3))
        flipped = -1 if mirrored else 1
        return float(np.einsum("ij,ij->", a, np.cross(b, c))) * flipped < 0
    return mirrored


def mesh_triangles(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph, with_uvs: bool = False) -> TriangleMesh:
    """One object's evaluated mesh, triangulated, in world space (float64), wound outward."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        local = _read(mesh.vertices, "co", 3, np.float32).astype(np.float64)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
        world = local @ matrix[:3, :3].T + matrix[:3, 3]
        faces = _read(mesh.loop_triangles, "vertices", 3, np.int32)
        loops = _read(mesh.loop_triangles, "loops", 3, np.int32)
        polygons = _read(mesh.loop_triangles, "polygon_index", 1, np.int32)
        uvs = None
        if with_uvs and (len(mesh.loops), len(mesh.polygons)) != (len(obj.data.loops), len(obj.data.polygons)):
            # The painted texture is mapped back onto the object's own loops, so they must be the same.
            raise ValueError(modifier_message(obj))
        uv_maps, render = {}, None
        if with_uvs:
            uv_maps = {layer.name: _read(layer.uv, "vector", 2, np.float32)[loops] for layer in mesh.uv_layers}
            render = next((layer.name for layer in mesh.uv_layers if layer.active_render), None)
        # the signed volume is measured in the object's own space, the determinant says if the world mirrors it
        if outward(local, faces, bool(np.linalg.det(matrix[:3, :3]) < 0)):
            faces, loops = faces[:, ::-1].copy(), loops[:, ::-1].copy()  # every corner array in the same order
            uv_maps = {name: corners[:, ::-1].copy() for name, corners in uv_maps.items()}
        if with_uvs and mesh.uv_layers.active is not None:
            uvs = uv_maps[mesh.uv_layers.active.name]
        return TriangleMesh(world, faces, uvs, loops, polygons, uv_maps, render)
    finally:
        evaluated.to_mesh_clear()


def concatenate(meshes: Iterable[TriangleMesh]) -> TriangleMesh:
    """Join meshes into one vertex and face list (UVs and loop maps only survive a single mesh)."""
    meshes = list(meshes)
    if len(meshes) == 1:
        return meshes[0]
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return TriangleMesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.faces + offset for m, offset in zip(meshes, offsets, strict=True)]).astype(np.int32),
    )


def export_objects(objects: Sequence[bpy.types.Object], depsgraph: bpy.types.Depsgraph,
                   with_uvs: bool = False) -> TriangleMesh:
    """The objects as one world-space triangle mesh. Raises ValueError with a user-facing reason."""
    if problem := selection_problem(objects, single=with_uvs):
        raise ValueError(problem)
    mesh = concatenate(mesh_triangles(obj, depsgraph, with_uvs) for obj in objects)
    if len(mesh.faces) == 0:
        names = ", ".join(obj.name for obj in objects)
        raise ValueError(f"{names}: no faces to send (the evaluated mesh is empty)")
    return mesh


def painted_polygons(obj: bpy.types.Object) -> tuple[int, int]:
    """(faces to paint, faces in all) of a mesh object: the selected faces in Edit Mode, else all."""
    if obj.mode == "EDIT":
        import bmesh

        return obj.data.total_face_sel, len(bmesh.from_edit_mesh(obj.data).faces)
    return len(obj.data.polygons), len(obj.data.polygons)


def selected_triangles(obj: bpy.types.Object, mesh: TriangleMesh) -> np.ndarray | None:
    """Indices of `mesh`'s triangles whose polygon is selected, when `obj` is in Edit Mode; None (paint all
    of it) in any other mode. Raises ValueError when Edit Mode has no face selected."""
    if obj.mode != "EDIT" or mesh.polygons is None:
        return None
    selected = _read(obj.data.polygons, "select", 1, bool)
    if not selected.any():
        raise ValueError(f"No face of \"{obj.name}\" is selected: select the faces to paint, or leave Edit Mode "
                         "to paint them all")
    return np.flatnonzero(selected[mesh.polygons]).astype(np.int64)


def per_vertex_uvs(mesh: TriangleMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices, faces, uvs) with one UV per vertex, as the service wants them: a vertex on a UV seam
    is split into one copy per UV it has. Face order is kept, so faces still match `mesh.loops`."""
    if mesh.uvs is None:
        return mesh.vertices, mesh.faces, None
    keys = np.concatenate([mesh.faces.reshape(-1, 1).astype(np.float64), mesh.uvs.reshape(-1, 2)], axis=1)
    unique, corner_to_new = np.unique(keys, axis=0, return_inverse=True)
    vertices = mesh.vertices[unique[:, 0].astype(np.int64)]
    return vertices, corner_to_new.reshape(-1, 3).astype(np.int32), unique[:, 1:].astype(np.float32)
