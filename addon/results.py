"""Service results into the scene: meshes built with `foreach_set`, a packed texture, a material.

Everything here runs on the main thread, called from an operator with the UNDO flag, so one undo
step takes a whole result away again.
"""

from __future__ import annotations

from collections.abc import Sequence

import bpy
import numpy as np

UV_LAYER = "LatentForge"
PROMPT_PROPERTY = "latentforge_prompt"  # the full prompt, on every object (and material, image) a result makes
JOB_PROPERTY = "latentforge_job"  # the service's job id, so the result can be fetched again
# Names get " texture" (or " sketch") appended, and Blender appends ".001" to a name already taken.
LONGEST_SUFFIX = len(" texture") + len(".001")
READABLE_BYTES = 63  # Blender's limit before 5.0; 5.0 allows 255 bytes, far more than the Outliner shows
# a name is not left ending on one of these ("... holding a"): they only lead into the words cut off
DANGLING = frozenset({"a", "an", "the", "of", "and", "or", "with", "in", "on", "at", "for", "to", "by", "from"})


def name_limit() -> int:
    """The bytes (UTF-8) a datablock name may have in this Blender: 63 before 5.0, 255 from 5.0."""
    return bpy.types.ID.bl_rna.properties["name"].length_max - 1  # length_max counts the C string's NUL


def name_from_prompt(prompt: str, fallback: str = "LatentForge") -> str:
    """A datablock name from a prompt: without its leading article, capitalised, and cut after the last
    whole word that fits Blender's name limit with room for a suffix and a ".001"."""
    budget = min(READABLE_BYTES, name_limit()) - LONGEST_SUFFIX
    words = prompt.split()
    if len(words) > 1 and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    name = ""
    for word in words:
        longer = f"{name} {word}" if name else word
        if len(longer.encode("utf-8")) > budget:
            break
        name = longer
    if not name and words:  # a single word longer than the budget: cut it between characters
        name = words[0].encode("utf-8")[:budget].decode("utf-8", "ignore")
    kept = name.split(" ")
    while len(kept) > 1 and len(kept) < len(words) and kept[-1].lower().rstrip(",.;:-") in DANGLING:
        kept.pop()
    name = " ".join(kept).rstrip(" ,.;:-")
    return name[:1].upper() + name[1:] if name else fallback


def tag(datablock: bpy.types.ID, prompt: str) -> None:
    """Keep the whole prompt on a datablock whose name holds only its first words."""
    datablock[PROMPT_PROPERTY] = prompt


def load_png(name: str, png: bytes) -> bpy.types.Image:
    """An image datablock holding `png` packed into the .blend (no file on disk needed)."""
    image = bpy.data.images.new(name, 1, 1)
    image["latentforge"] = True  # made by the add-on: removed with the material it was made for
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"  # decode the packed PNG instead of the generated 1×1
    image.filepath_raw = f"//{bpy.path.clean_name(name)}.png"  # where "Unpack Resources" would write it
    return image


def textured_material(name: str, image: bpy.types.Image, uv_layer: str) -> bpy.types.Material:
    """Principled BSDF whose base colour is `image`, read through the named UV map."""
    material = bpy.data.materials.new(name)
    material["latentforge"] = True
    if material.node_tree is None:  # Blender 4.x; from 5.0 every material has its node tree
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.8
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location.x - 320, bsdf.location.y)
    uv_map = nodes.new("ShaderNodeUVMap")
    uv_map.uv_map = uv_layer
    uv_map.location = (texture.location.x - 220, texture.location.y)
    links.new(uv_map.outputs["UV"], texture.inputs["Vector"])
    links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def add_normal_map(material: bpy.types.Material, image: bpy.types.Image, uv_layer: str) -> None:
    """Wire a tangent-space normal map (read as non-colour data) through a Normal Map node into the BSDF."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    image.colorspace_settings.name = "Non-Color"
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location.x - 540, bsdf.location.y - 320)
    normal = nodes.new("ShaderNodeNormalMap")
    normal.space = "TANGENT"
    normal.uv_map = uv_layer
    normal.location = (bsdf.location.x - 220, bsdf.location.y - 320)
    uv_map = next(n for n in nodes if n.type == "UVMAP")
    links.new(uv_map.outputs["UV"], texture.inputs["Vector"])
    links.new(texture.outputs["Color"], normal.inputs["Color"])
    links.new(normal.outputs["Normal"], bsdf.inputs["Normal"])


def set_uv_layer(mesh: bpy.types.Mesh, name: str, per_loop: np.ndarray) -> bpy.types.MeshUVLoopLayer:
    """A new mesh's UV map (the active and render one)."""
    layer = mesh.uv_layers.get(name) or mesh.uv_layers.new(name=name)
    layer.uv.foreach_set("vector", np.ascontiguousarray(per_loop, dtype=np.float32).ravel())
    mesh.uv_layers.active = layer
    layer.active_render = True
    return layer


def build_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None,
               polygons: tuple[np.ndarray, np.ndarray] | None = None, weld: bool = False) -> bpy.types.Mesh:
    """A mesh of triangles `faces`, or of `polygons` (corners per face, then every face's corners in a row:
    real quads) over the same vertices; `uvs` per vertex ([V, 2], as the service sends them) become the UV
    map `UV_LAYER`. With `weld`, vertices that UV seams split are one vertex again (the UVs are per corner)."""
    sizes, corners = polygons if polygons is not None else (np.full(len(faces), 3), np.asarray(faces).ravel())
    sizes, corners = np.asarray(sizes, dtype=np.int64), np.asarray(corners, dtype=np.int64)
    points, point_of = np.asarray(vertices, dtype=np.float32), np.arange(len(vertices))
    if weld:
        points, point_of = np.unique(points, axis=0, return_inverse=True)
        point_of = point_of.reshape(-1)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", np.ascontiguousarray(points, dtype=np.float32).ravel())
    mesh.loops.add(len(corners))
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(point_of[corners], dtype=np.int32))
    mesh.polygons.add(len(sizes))
    mesh.polygons.foreach_set("loop_start", (np.cumsum(sizes) - sizes).astype(np.int32))
    mesh.polygons.foreach_set("loop_total", sizes.astype(np.int32))
    if uvs is not None:
        set_uv_layer(mesh, UV_LAYER, np.asarray(uvs)[corners])
    mesh.update()
    mesh.validate(clean_customdata=False)
    return mesh


def collect_sketch(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], name: str) -> bpy.types.Collection:
    """Move the sketch objects into one hidden collection: out of sight and renders, never deleted."""
    collection = bpy.data.collections.new(f"{name} sketch")
    scene.collection.children.link(collection)
    for obj in objects:
        for owner in list(obj.users_collection):
            owner.objects.unlink(obj)
        collection.objects.link(obj)
    collection.hide_viewport = True
    collection.hide_render = True
    return collection


def import_generated(scene: bpy.types.Scene, prompt: str, vertices: np.ndarray, faces: np.ndarray,
                     uvs: np.ndarray | None, texture_png: bytes | None, anchor: Sequence[float],
                     sketch: Sequence[bpy.types.Object] = (), normal_png: bytes | None = None,
                     polygons: tuple[np.ndarray, np.ndarray] | None = None,
                     lods: Sequence[dict] = ()) -> bpy.types.Object:
    """A new object from world-space arrays, its origin at `anchor`; the sketch hidden and collected.
    A `normal_png` (a refined mesh's tangent-space normal map) is wired into its material, and `polygons` make
    it of real quads. With `lods` (levels 1, 2 … of a game-ready result, each a dict of world-space `vertices`,
    `faces`, `uvs`, optional `polygons`, its `normal_png` and, when it has its own, `texture_png`), every level
    is an object NAME_LOD<k> in one collection NAME, LOD0 shown, the others hidden, all reading LOD0's colour
    image unless they bring their own. Vertices are made relative to the origin in float64, so that an asset far
    from the world's origin keeps its detail. Returns LOD0's object."""
    name = name_from_prompt(prompt)
    anchor = np.asarray(anchor, dtype=np.float64)
    target = sketch[0].users_collection[0] if sketch and sketch[0].users_collection else scene.collection
    game_ready = bool(lods) or polygons is not None
    levels = [{"vertices": vertices, "faces": faces, "uvs": uvs, "polygons": polygons, "normal_png": normal_png,
               "texture_png": texture_png}, *lods]
    if lods:
        collection = bpy.data.collections.new(name)
        tag(collection, prompt)
        target.children.link(collection)
        target = collection
    shared = None
    objects = []
    for k, level in enumerate(levels):
        level_name = f"{name}_LOD{k}" if lods else name
        mesh = build_mesh(level_name, np.asarray(level["vertices"], dtype=np.float64) - anchor, level["faces"],
                          level["uvs"], level.get("polygons"), weld=game_ready)
        obj = bpy.data.objects.new(level_name, mesh)
        tag(obj, prompt)
        obj.location = anchor.tolist()
        target.objects.link(obj)
        png = level.get("texture_png")
        if png is not None or shared is not None:
            image = load_png(f"{level_name} texture", png) if png is not None else shared
            shared = image if k == 0 else shared
            material = textured_material(level_name, image, UV_LAYER)
            if level.get("normal_png") is not None:
                add_normal_map(material, load_png(f"{level_name} normal map", level["normal_png"]), UV_LAYER)
            mesh.materials.append(material)
        if k:  # LOD0 is the one seen; the others are there for the exporter and the artist to switch to
            obj.hide_set(True)
            obj.hide_render = True
        objects.append(obj)
    if sketch:
        collect_sketch(scene, sketch, name)
    return objects[0]


def remove_unused(materials: Sequence[bpy.types.Material]) -> None:
    """Remove the add-on's own materials (and their images) that nothing uses any more, e.g. an earlier
    paint's: an artist's material is never touched, even when unused."""
    for material in materials:
        if not material.get("latentforge") or material.users:
            continue
        images = [n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]
        bpy.data.materials.remove(material)
        for image in images:
            if image.get("latentforge") and not image.users:
                bpy.data.images.remove(image)

