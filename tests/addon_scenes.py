"""Scenes an artist would bring to Paint, built in real bpy for the add-on's tests: textured and multi-material
meshes, node setups the add-on can and cannot read, tiled (UDIM) images. Import after test_addon_support."""

from __future__ import annotations

import numpy as np
import test_addon_support as support

CHECKER = 64  # the artist's image side


def checker_pixels(size: int = CHECKER, cells: int = 8, colours: tuple = ((230, 200, 40), (30, 60, 160))) -> np.ndarray:
    """[size, size, 3] uint8 checker, row 0 the top."""
    cell = (np.arange(size)[:, None] // (size // cells) + np.arange(size)[None, :] // (size // cells)) % 2
    return np.where(cell[..., None] == 0, np.array(colours[0], np.uint8), np.array(colours[1], np.uint8))


def packed_image(name: str, rgb: np.ndarray) -> object:
    """An sRGB byte image holding `rgb` [H, W, 3] (row 0 the top), packed into the .blend."""
    bpy = support.modules()[0]
    h, w, _ = rgb.shape
    image = bpy.data.images.new(name, w, h)
    rgba = np.concatenate([rgb[::-1].astype(np.float32) / 255, np.ones((h, w, 1), np.float32)], -1)
    image.pixels.foreach_set(rgba.ravel())
    image.pack()
    return image


def image_bytes(image: object) -> np.ndarray:
    """[H, W, 3] uint8 of a byte image, row 0 the top."""
    w, h = image.size
    flat = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(flat)
    return np.round(flat.reshape(h, w, 4)[::-1, :, :3] * 255).astype(np.uint8)


def image_material(name: str, image: object, uv_map: str | None = None) -> object:
    """A Principled BSDF whose base colour is `image` (through `uv_map` when named, else the render map)."""
    bpy = support.modules()[0]
    material = bpy.data.materials.new(name)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    if uv_map is not None:
        node = nodes.new("ShaderNodeUVMap")
        node.uv_map = uv_map
        links.new(node.outputs["UV"], texture.inputs["Vector"])
    return material


def plain_material(name: str, linear: tuple[float, float, float]) -> object:
    bpy = support.modules()[0]
    material = bpy.data.materials.new(name)
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (*linear, 1.0)
    material.diffuse_color = (*linear, 1.0)
    return material


def procedural_material(name: str, viewport: tuple[float, float, float]) -> object:
    bpy = support.modules()[0]
    material = bpy.data.materials.new(name)
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    noise = nodes.new("ShaderNodeTexNoise")
    material.node_tree.links.new(noise.outputs["Color"], bsdf.inputs["Base Color"])
    material.diffuse_color = (*viewport, 1.0)
    return material


def checker_cube(second: object | None = None) -> object:
    """A unit cube standing on z = 0: a packed 64² checker ("Checker") on five faces and `second` (default
    a plain red material, "Red") on its front (−Y) face."""
    bpy = support.modules()[0]
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.object
    cube.data.materials.append(image_material("Checker", packed_image("Checker", checker_pixels())))
    cube.data.materials.append(second or plain_material("Red", (0.8, 0.02, 0.02)))
    for p in cube.data.polygons:
        p.material_index = 1 if p.normal.y < -0.9 else 0
    return cube


def polygons_facing(obj: object, axis: int, sign: float) -> list[int]:
    return [p.index for p in obj.data.polygons if p.normal[axis] * sign > 0.9]


def edit_select(obj: object, polygons: list[int]) -> None:
    """Select exactly `polygons` and enter Edit Mode (face select), as an artist would."""
    bpy = support.modules()[0]
    mesh = obj.data
    chosen = set(polygons)
    for p in mesh.polygons:
        p.select = p.index in chosen
    corners = {v for i in chosen for v in mesh.polygons[i].vertices}
    for v in mesh.vertices:
        v.select = v.index in corners
    for e in mesh.edges:
        e.select = all(k in corners for k in e.vertices)
    for other in bpy.context.scene.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj
    bpy.context.tool_settings.mesh_select_mode = (False, False, True)
    bpy.ops.object.mode_set(mode="EDIT")


def polygon_uvs(obj: object, layer: str) -> dict[int, np.ndarray]:
    """Each polygon's corner UVs [n, 2] in a UV map."""
    mesh = obj.data
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers[layer].uv.foreach_get("vector", uv)
    uv = uv.reshape(-1, 2)
    return {p.index: uv[list(p.loop_indices)] for p in mesh.polygons}
