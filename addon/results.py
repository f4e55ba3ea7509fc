"""Service results into the scene: meshes built with `foreach_set`, a packed texture, a material.

Everything here runs on the main thread, called from an operator with the UNDO flag, so one undo
step takes a whole result away again.
"""

from __future__ import annotations

from collections.abc import Sequence

import bpy
import numpy as np

UV_LAYER = "LatentForge"
MAX_NAME = 48  # Blender names are limited to 63 bytes; leave room for ".001" and a suffix


def name_from_prompt(prompt: str, fallback: str = "LatentForge") -> str:
    words = " ".join(prompt.split())
    for article in ("a ", "an ", "the "):
        if words.lower().startswith(article):
            words = words[len(article):]
            break
    words = words[:MAX_NAME].rstrip(" ,.;:")
    return words[:1].upper() + words[1:] if words else fallback


def load_png(name: str, png: bytes) -> bpy.types.Image:
    """An image datablock holding `png` packed into the .blend (no file on disk needed)."""
    image = bpy.data.images.new(name, 1, 1)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"  # decode the packed PNG instead of the generated 1×1
    image.filepath_raw = f"//{bpy.path.clean_name(name)}.png"  # where "Unpack Resources" would write it
    return image


def textured_material(name: str, image: bpy.types.Image, uv_layer: str) -> bpy.types.Material:
    """Principled BSDF whose base colour is `image`, read through the named UV map."""
    material = bpy.data.materials.new(name)
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
    layer = mesh.uv_layers.get(name) or mesh.uv_layers.new(name=name)
    layer.uv.foreach_set("vector", np.ascontiguousarray(per_loop, dtype=np.float32).ravel())
    mesh.uv_layers.active = layer
    layer.active_render = True
    return layer


def build_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None) -> bpy.types.Mesh:
    """A triangle mesh; `uvs` per vertex ([V, 2], as the service sends them) become the UV map `UV_LAYER`."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", np.ascontiguousarray(vertices, dtype=np.float32).ravel())
    mesh.loops.add(len(faces) * 3)
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, dtype=np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, len(faces) * 3, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
    if uvs is not None:
        set_uv_layer(mesh, UV_LAYER, np.asarray(uvs)[np.asarray(faces).ravel()])
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
                     sketch: Sequence[bpy.types.Object] = (), normal_png: bytes | None = None) -> bpy.types.Object:
    """A new object from world-space arrays, its origin at `anchor`; the sketch hidden and collected.
    A `normal_png` (a refined mesh's tangent-space normal map) is wired into its material."""
    name = name_from_prompt(prompt)
    anchor = np.asarray(anchor, dtype=np.float32)
    mesh = build_mesh(name, np.asarray(vertices, dtype=np.float32) - anchor, faces, uvs)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = anchor.tolist()
    target = sketch[0].users_collection[0] if sketch and sketch[0].users_collection else scene.collection
    target.objects.link(obj)
    if texture_png is not None:
        material = textured_material(name, load_png(f"{name} texture", texture_png), UV_LAYER)
        if normal_png is not None:
            add_normal_map(material, load_png(f"{name} normal map", normal_png), UV_LAYER)
        mesh.materials.append(material)
    if sketch:
        collect_sketch(scene, sketch, name)
    return obj


def apply_painted(obj: bpy.types.Object, prompt: str, corner_uvs: np.ndarray, loops: np.ndarray,
                  texture_png: bytes) -> bpy.types.Object:
    """Give `obj` the painted texture: a UV map (reusing the one it had when the service kept it) and a
    material. `corner_uvs` [F, 3, 2] are the UVs of the sent triangles' corners and `loops` [F, 3] the
    mesh loop of each corner; the mesh's vertices and faces are untouched."""
    mesh = obj.data
    per_loop = np.zeros((len(mesh.loops), 2), dtype=np.float32)
    per_loop[np.asarray(loops).ravel()] = np.asarray(corner_uvs, dtype=np.float32).reshape(-1, 2)
    layer = mesh.uv_layers.active
    if layer is not None:
        current = np.empty(len(mesh.loops) * 2, dtype=np.float32)
        layer.uv.foreach_get("vector", current)
        if not np.allclose(current.reshape(-1, 2), per_loop, atol=1e-5):
            layer = None
    if layer is None:
        layer = set_uv_layer(mesh, UV_LAYER, per_loop)
    name = name_from_prompt(prompt)
    mesh.materials.clear()
    mesh.materials.append(textured_material(name, load_png(f"{name} texture", texture_png), layer.name))
    return obj
