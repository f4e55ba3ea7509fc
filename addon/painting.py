"""Paint without destroying: what a paint sends about the object, and its result put on the painted faces only.

The painted faces get the new texture through a new image and, per material slot they used, a new
material (a copy of that slot's material whose base colour now reads the new image) on a new slot. Every
other face keeps its slot, so it looks exactly as before; the artist's materials, images and UV maps are
never written to, and every one keeps its users (its slot stays, even when no face uses it any more). The
new image is a painted copy of the image the painted faces showed, named "<image> (<prompt>)" with the
original's name in its custom property `latentforge_source`; the original is unchanged, in the original
material. Everything runs in one operator with the UNDO flag: one undo step takes it all away.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import bpy
import numpy as np

from . import results
from .appearance import SOURCE_PROPERTY, Looks, appearance_arrays, colour_socket, read_looks
from .geometry import TriangleMesh
from .jobs import Job, PaintPlan


def plan_paint(obj: bpy.types.Object, mesh: TriangleMesh,
               selected: np.ndarray | None) -> tuple[PaintPlan, TriangleMesh, dict[str, np.ndarray] | None]:
    """What a paint of `obj` (its export `mesh`; only the triangles `selected`, when given) sends: the plan
    its result follows, the mesh with the UVs painted through, and the appearance arrays of a partial paint."""
    looks: Looks = read_looks(obj, mesh)
    faces = selected if selected is not None else np.arange(len(mesh.faces))
    uv_map = looks.paint_uv_map(faces, mesh.uv_maps)
    appearance = appearance_arrays(obj, mesh, looks) if selected is not None else None
    polygons, first = np.unique(mesh.polygons[faces], return_index=True)
    copied = looks.copied_image(faces, uv_map)
    source = copied.get(SOURCE_PROPERTY, copied.name) if copied is not None else None  # a repaint: the original
    plan = PaintPlan(polygons, looks.face_slots[faces][first], uv_map, source, looks.notes)
    return plan, replace(mesh, uvs=mesh.uv_maps.get(uv_map) if uv_map else None), appearance


def apply_painted(obj: bpy.types.Object, job: Job, corner_uvs: np.ndarray, texture_png: bytes,
                  tiles: dict[int, bytes]) -> bpy.types.Object:
    """Put a paint's result on the faces it painted. `corner_uvs` [F, 3, 2] are the UVs of the sent
    triangles' corners (`job.loops` their mesh loops); `tiles` a UDIM paint's PNG per tile. An object in
    Edit Mode (a partial paint) leaves it for the write, or leaving it later would write the old mesh back."""
    if obj.mode == "EDIT":
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="OBJECT")
            try:
                return apply_painted(obj, job, corner_uvs, texture_png, tiles)
            finally:
                bpy.ops.object.mode_set(mode="EDIT")
    plan, mesh = job.paint, obj.data
    name = results.name_from_prompt(job.prompt)
    layer = paint_layer(mesh, plan.uv_map, corner_uvs, job.loops)
    image = painted_image(name, plan.copies, texture_png, tiles, job.prompt)
    if not obj.material_slots:
        mesh.materials.append(None)  # the faces not painted keep showing no material
    indices = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("material_index", indices)
    new_slot = {}
    for slot in np.unique(plan.slots).tolist():
        original = obj.material_slots[slot].material if slot < len(obj.material_slots) else None
        mesh.materials.append(painted_material(original, name, image, layer.name, job.prompt))
        new_slot[slot] = len(obj.material_slots) - 1
    indices[plan.polygons] = [new_slot[s] for s in plan.slots.tolist()]
    mesh.polygons.foreach_set("material_index", indices)
    drop_unused_slots(obj)
    mesh.update()
    results.tag(obj, job.prompt)
    return obj


def paint_layer(mesh: bpy.types.Mesh, uv_map: str | None, corner_uvs: np.ndarray,
                loops: np.ndarray) -> bpy.types.MeshUVLoopLayer:
    """The UV map painted through when the service kept it, else a new one (never an existing one
    rewritten). A new map becomes the active render map only on a mesh that had none, so no material
    that reads the render map changes."""
    corner_uvs = np.asarray(corner_uvs, np.float32).reshape(-1, 2)
    loops = np.asarray(loops).reshape(-1)
    layer = mesh.uv_layers.get(uv_map) if uv_map else None
    if layer is not None:
        current = np.empty(len(mesh.loops) * 2, np.float32)
        layer.uv.foreach_get("vector", current)
        if np.allclose(current.reshape(-1, 2)[loops], corner_uvs, atol=1e-5):
            return layer
    if len(mesh.uv_layers) >= 8:
        raise ValueError(f"\u201c{mesh.name}\u201d has 8 UV maps, Blender's most, and the paint needs a new one: "
                         "remove a UV map, or give the faces usable UVs, and paint again")
    first = not mesh.uv_layers
    layer = mesh.uv_layers.new(name=results.UV_LAYER)
    per_loop = np.zeros((len(mesh.loops), 2), np.float32)
    per_loop[loops] = corner_uvs
    layer.uv.foreach_set("vector", per_loop.ravel())
    if first:
        mesh.uv_layers.active = layer
        layer.active_render = True
    return layer


def painted_image(name: str, copies: str | None, texture_png: bytes, tiles: dict[int, bytes],
                  prompt: str) -> bpy.types.Image:
    """The new image: the painted copy of `copies` (named after it) or a new texture; tiled for UDIM."""
    label = f"{copies} ({name})" if copies else f"{name} texture"
    image = tiled_image(label, tiles) if tiles else results.load_png(label, texture_png)
    if copies:
        image[SOURCE_PROPERTY] = copies
    results.tag(image, prompt)
    return image


def tiled_image(name: str, tiles: dict[int, bytes]) -> bpy.types.Image:
    """A tiled (UDIM) image packed into the .blend, one PNG per tile."""
    folder = Path(tempfile.mkdtemp(prefix="latentforge-udim-"))
    try:
        for tile, png in tiles.items():
            (folder / f"tile.{tile}.png").write_bytes(png)
        image = bpy.data.images.new(name, 1, 1, tiled=True)
        image["latentforge"] = True
        for tile in sorted(tiles):
            if not any(t.number == tile for t in image.tiles):
                image.tiles.new(tile)
        for tile in [t for t in image.tiles if t.number not in tiles]:
            image.tiles.remove(tile)
        image.source = "TILED"
        image.filepath = str(folder / "tile.<UDIM>.png")
        image.reload()
        image.pack()
        image.filepath_raw = f"//{bpy.path.clean_name(name)}.<UDIM>.png"  # where "Unpack Resources" writes
        return image
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def painted_material(original: bpy.types.Material | None, name: str, image: bpy.types.Image, uv_layer: str,
                     prompt: str) -> bpy.types.Material:
    """A copy of `original` whose base colour reads `image` through `uv_layer` (its other settings kept);
    a new Principled material when there is no original or its base colour has no socket to read into."""
    socket = None
    if original is not None:
        material = original.copy()  # a repaint copies the earlier copy (and the artist's tweaks to it)
        source = original.get(SOURCE_PROPERTY, original.name)
        material.name = f"{source} ({name})"
        material[SOURCE_PROPERTY] = source
        socket = colour_socket(material)
        if socket is None:
            bpy.data.materials.remove(material)
    if socket is None:
        material = results.textured_material(name, image, uv_layer)
    else:
        nodes, links = material.node_tree.nodes, material.node_tree.links
        for link in list(socket.links):
            earlier = link.from_node  # an earlier paint's image node goes; the artist's nodes stay
            links.remove(link)
            if earlier.type == "TEX_IMAGE" and earlier.image is not None and earlier.image.get("latentforge"):
                for uv in [v.from_node for v in earlier.inputs["Vector"].links if v.from_node.type == "UVMAP"]:
                    nodes.remove(uv)
                nodes.remove(earlier)
        shader = socket.node
        texture = nodes.new("ShaderNodeTexImage")
        texture.image = image
        texture.location = (shader.location.x - 320, shader.location.y - 400)
        uv_map = nodes.new("ShaderNodeUVMap")
        uv_map.uv_map = uv_layer
        uv_map.location = (texture.location.x - 220, texture.location.y)
        links.new(uv_map.outputs["UV"], texture.inputs["Vector"])
        links.new(texture.outputs["Color"], socket)
    material["latentforge"] = True
    results.tag(material, prompt)
    return material


def drop_unused_slots(obj: bpy.types.Object) -> None:
    """Remove the slots of the add-on's own materials that no face uses any more (an earlier paint's, now
    painted over), and those materials and images when nothing else uses them. An artist's slot stays."""
    mesh = obj.data
    indices = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("material_index", indices)
    used = set(np.unique(indices).tolist())
    dropped = []
    for i in reversed(range(len(mesh.materials))):
        material = mesh.materials[i]
        if material is not None and material.get("latentforge") and i not in used:
            dropped.append(mesh.materials.pop(index=i))  # Blender moves the indices above down
    results.remove_unused(dropped)
