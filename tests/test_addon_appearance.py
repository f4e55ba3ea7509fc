"""What the Paint operator reads of an artist's materials under real bpy, no server: images, UV maps,
flat and attribute colours as Blender holds them, and the node setups and files it cannot read."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import test_addon_support as support
from addon_scenes import (
    checker_cube,
    checker_pixels,
    image_material,
    packed_image,
    plain_material,
    polygons_facing,
    procedural_material,
)


@pytest.fixture
def bpy() -> ModuleType:
    support.fresh_scene()
    return support.modules()[0]


def plan(bpy: ModuleType, obj: object, polygons: list[int] | None) -> tuple:
    """What Paint would send for `obj` with `polygons` selected (None: all of it)."""
    geometry, painting = support.submodule("geometry"), support.submodule("painting")
    mesh = geometry.export_objects([obj], bpy.context.evaluated_depsgraph_get(), with_uvs=True)
    selected = None if polygons is None else np.flatnonzero(np.isin(mesh.polygons, polygons))
    return (mesh, *painting.plan_paint(obj, mesh, selected))


def test_an_image_slot_and_a_plain_slot_are_sent_as_blender_holds_them(bpy: ModuleType) -> None:
    cube = checker_cube()
    top = polygons_facing(cube, 2, 1.0)
    mesh, paint, through, arrays = plan(bpy, cube, top)
    assert paint.uv_map == "UVMap" and paint.copies == "Checker" and list(paint.polygons) == top
    assert list(paint.slots) == [0] and paint.notes == []
    np.testing.assert_array_equal(through.uvs, mesh.uv_maps["UVMap"])
    np.testing.assert_array_equal(arrays["face_slots"], np.where(np.isin(mesh.polygons, polygons_facing(cube, 1, -1.0)),
                                                                 1, 0))
    np.testing.assert_array_equal(arrays["slot_sources"], [0, -1])
    np.testing.assert_allclose(arrays["slot_colors"][1], (0.8, 0.02, 0.02), atol=1e-6)  # linear, as in Blender
    assert arrays["image.0.1001"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["image.0.1001"], checker_pixels())  # its bytes, row 0 the top
    checker = arrays["face_slots"] == 0
    np.testing.assert_array_equal(arrays["image_uvs"].reshape(-1, 3, 2)[checker], mesh.uv_maps["UVMap"][checker])
    assert "corner_colors" not in arrays


def test_a_whole_object_paint_sends_no_appearance(bpy: ModuleType) -> None:
    cube = checker_cube()
    _, paint, _, arrays = plan(bpy, cube, None)
    assert arrays is None and len(paint.polygons) == 6 and sorted(set(paint.slots.tolist())) == [0, 1]


def test_the_uv_map_the_image_reads_is_painted_through_else_the_render_map(bpy: ModuleType) -> None:
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    second = cube.data.uv_layers.new(name="Second")
    rng = np.random.default_rng(0)
    second.uv.foreach_set("vector", rng.random(len(cube.data.loops) * 2).astype(np.float32))
    cube.data.materials.append(image_material("On second", packed_image("Img", checker_pixels()), "Second"))
    mesh, paint, through, _ = plan(bpy, cube, [0])
    assert paint.uv_map == "Second" and mesh.render_uv_map == "UVMap"
    np.testing.assert_array_equal(through.uvs, mesh.uv_maps["Second"])
    cube.data.materials[0] = plain_material("Plain", (0.5, 0.5, 0.5))
    assert plan(bpy, cube, [0])[1].uv_map == "UVMap"  # no image: the active render map


def test_a_procedural_base_colour_is_sent_as_the_viewport_colour_with_a_note(bpy: ModuleType) -> None:
    cube = checker_cube(procedural_material("Marble", (0.3, 0.3, 0.35)))
    _, paint, _, arrays = plan(bpy, cube, polygons_facing(cube, 2, 1.0))
    assert arrays["slot_sources"][1] == -1
    np.testing.assert_allclose(arrays["slot_colors"][1], (0.3, 0.3, 0.35), atol=1e-6)
    assert len(paint.notes) == 1
    assert "\u201cMarble\u201d is kept around the paint as its viewport colour" in paint.notes[0]
    assert "Noise Texture" in paint.notes[0]


def test_a_colour_attribute_is_sent_per_corner_in_linear(bpy: ModuleType) -> None:
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    attribute = cube.data.color_attributes.new("Paint", "FLOAT_COLOR", "POINT")
    attribute.data.foreach_set("color", np.tile([0.2, 0.6, 0.8, 1.0], len(cube.data.vertices)).astype(np.float32))
    material = bpy.data.materials.new("Vertex coloured")
    nodes = material.node_tree.nodes
    node = nodes.new("ShaderNodeVertexColor")
    node.layer_name = "Paint"
    material.node_tree.links.new(node.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    cube.data.materials.append(material)
    _, _, _, arrays = plan(bpy, cube, [0])
    np.testing.assert_array_equal(arrays["slot_sources"], [-2])
    np.testing.assert_allclose(arrays["corner_colors"], np.tile([0.2, 0.6, 0.8], (36, 1)), atol=1e-6)


def test_a_float_image_is_sent_as_linear_values(bpy: ModuleType) -> None:
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    image = bpy.data.images.new("Linear", 8, 8, float_buffer=True)
    image.pixels.foreach_set(np.tile([0.2, 0.6, 0.8, 1.0], 64).astype(np.float32))
    cube.data.materials.append(image_material("Float", image))
    _, _, _, arrays = plan(bpy, cube, [0])
    assert arrays["image.0.1001"].dtype == np.float16
    np.testing.assert_allclose(arrays["image.0.1001"][0, 0], [0.2, 0.6, 0.8], atol=1e-3)


def test_a_missing_image_file_is_a_clear_error(bpy: ModuleType, tmp_path) -> None:
    cube = checker_cube()
    gone = bpy.data.images.new("Gone", 4, 4)
    gone.source, gone.filepath = "FILE", str(tmp_path / "nowhere" / "gone.png")
    cube.data.materials.append(image_material("Lost", gone))
    cube.data.polygons[0].material_index = 2
    with pytest.raises(ValueError, match=r"The image \u201cGone\u201d of \u201cLost\u201d is not packed and its "
                                         r"file .*gone.png is missing: find it \(File \u203a External Data"):
        plan(bpy, cube, [1])


def test_a_tiled_image_is_sent_tile_by_tile(bpy: ModuleType, tmp_path) -> None:
    from PIL import Image

    bpy.ops.mesh.primitive_plane_add()
    plane = bpy.context.object
    for tile, colour in ((1001, 40), (1002, 200)):
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(tmp_path / f"tiles.{tile}.png")
    image = bpy.data.images.new("Tiles", 8, 8, tiled=True)
    image.tiles.new(1002)
    image.source, image.filepath = "TILED", str(tmp_path / "tiles.<UDIM>.png")
    image.reload()
    image.pack()
    plane.data.materials.append(image_material("UDIM", image))
    _, _, _, arrays = plan(bpy, plane, [0])
    assert sorted(k for k in arrays if k.startswith("image.")) == ["image.0.1001", "image.0.1002"]
    assert (arrays["image.0.1001"] == 40).all() and (arrays["image.0.1002"] == 200).all()
