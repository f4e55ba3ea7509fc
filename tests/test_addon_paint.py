"""Paint never destroys the artist's work, end to end: the add-on in real bpy against a real `latentforge
serve` (the tiny CPU pipeline). The faces not painted keep their materials and images byte for byte, the
artist's datablocks keep their users through a save and a reopen, one undo takes a paint away, UDIM tiles
are painted tile by tile, and what the add-on cannot read or find is said.

The Cycles pair of the partial paint (before/after, 256², 16 samples) is written to `<tmp>/paint-before.png`
and `<tmp>/paint-after.png` (pytest's tmp_path of that test; the paths are printed).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import test_addon_support as support
from addon_scenes import (
    CHECKER,
    checker_cube,
    checker_pixels,
    edit_select,
    image_bytes,
    image_material,
    polygon_uvs,
    polygons_facing,
    procedural_material,
)
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.draw import polygon as fill_polygon
from test_addon_scene import draw
from test_addon_service import TINY_PAINT, Service, configure, connected_scene, run_to_end, serving

from backend.tasks.face_selection import padding_for

pytestmark = pytest.mark.slow  # each test runs a paint job on the service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with serving(tmp_path_factory.mktemp("service"), timeout_s=5.0) as server:
        yield server


@pytest.fixture
def bpy(service: Service) -> ModuleType:
    return connected_scene()


def paint(bpy: ModuleType, service: Service, prompt: str) -> object:
    configure(bpy, prompt, "PAINT", TINY_PAINT)
    bpy.ops.ed.undo_push(message="before the paint")  # what the UI does after each edit
    assert bpy.ops.latentforge.paint() == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    return job


def base_colour_image(material: object) -> object:
    bsdf = material.node_tree.nodes["Principled BSDF"]
    return bsdf.inputs["Base Color"].links[0].from_node.image


def footprint(uvs: np.ndarray, size: int, grow: int) -> np.ndarray:
    """[size, size] texels of a UV polygon (row 0 = v 1), grown by `grow` texels and one for clipped edges."""
    mask = np.zeros((size, size), bool)
    rows, cols = fill_polygon((1 - uvs[:, 1]) * size - 0.5, uvs[:, 0] * size - 0.5, (size, size))
    mask[rows, cols] = True
    return binary_dilation(mask, iterations=grow + 1)


def state(bpy: ModuleType, cube: object) -> dict:
    """What an artist would check: materials by slot, each polygon's slot, the images' bytes, the users."""
    indices = np.empty(len(cube.data.polygons), np.int32)
    cube.data.polygons.foreach_get("material_index", indices)
    images = [i for i in bpy.data.images if i.type == "IMAGE"]  # not the render result
    return {"slots": [m.name for m in cube.data.materials], "indices": indices.tolist(),
            "materials": sorted(m.name for m in bpy.data.materials),
            "images": {i.name: image_bytes(i).tobytes() for i in images if i.source != "TILED"},
            "users": {m.name: m.users for m in bpy.data.materials} | {i.name: i.users for i in images}}


def render(bpy: ModuleType, path: Path) -> np.ndarray:
    """A Cycles render of the scene from a camera above one corner (256², 16 samples, white world light)."""
    scene = bpy.context.scene
    if scene.camera is None:  # above a corner, looking at the cube's centre
        bpy.ops.object.camera_add(location=(1.7, -2.1, 2.1))
        scene.camera = bpy.context.object
        centre = bpy.data.objects.new("centre", None)
        centre.location = (0.0, 0.0, 0.45)
        scene.collection.objects.link(centre)
        track = scene.camera.constraints.new("TRACK_TO")
        track.target, track.track_axis, track.up_axis = centre, "TRACK_NEGATIVE_Z", "UP_Y"
        world = bpy.data.worlds.new("white")
        world.node_tree.nodes["Background"].inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        scene.world = world
    scene.view_settings.view_transform = "Standard"  # colours as painted, not tone-mapped
    support.render_still(scene, path, 256, 16)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def screen_mask(bpy: ModuleType, cube: object, polygon: int, size: int = 256) -> np.ndarray:
    """[size, size] the pixels a polygon covers in the scene camera's view, grown by two pixels."""
    from bpy_extras.object_utils import world_to_camera_view

    scene = bpy.context.scene
    corners = [world_to_camera_view(scene, scene.camera, cube.matrix_world @ cube.data.vertices[v].co)
               for v in cube.data.polygons[polygon].vertices]
    uv = np.array([[c.x, c.y] for c in corners])
    return footprint(uv, size, 2)


def test_a_partial_paint_keeps_every_other_face_through_save_reopen_and_undo(bpy: ModuleType, service: Service,
                                                                             tmp_path: Path) -> None:
    cube = checker_cube()
    top = polygons_facing(cube, 2, 1.0)
    before = state(bpy, cube)
    before_render = render(bpy, tmp_path / "paint-before.png")
    top_uvs = polygon_uvs(cube, "UVMap")[top[0]]  # UV maps are read in Object Mode
    edit_select(cube, top)
    job = paint(bpy, service, "a gold panel")
    assert cube.mode == "EDIT" and job.paint.copies == "Checker"  # written without leaving the user's mode
    after = state(bpy, cube)
    # the unselected faces: the same slots, the same materials, the artist's images byte for byte
    assert after["slots"][:2] == ["Checker", "Red"] and after["slots"][2:] == ["Checker (Gold panel)"]
    assert all(after["indices"][p] == before["indices"][p] for p in range(6) if p not in top)
    assert [after["indices"][p] for p in top] == [2]
    assert after["images"]["Checker"] == before["images"]["Checker"]
    assert base_colour_image(bpy.data.materials["Checker"]).name == "Checker"
    assert tuple(bpy.data.materials["Red"].node_tree.nodes["Principled BSDF"].inputs["Base Color"]
                 .default_value)[:3] == pytest.approx((0.8, 0.02, 0.02))
    # the painted face reads a painted copy of the checker through the same UV map; outside the face's
    # texels (grown by the stated padding) the copy is the checker byte for byte, gutters included
    painted = bpy.data.materials["Checker (Gold panel)"]
    copy = base_colour_image(painted)
    assert copy.name == "Checker (Gold panel)" and copy["latentforge_source"] == "Checker" and copy.packed_file
    uv_node = painted.node_tree.nodes["Principled BSDF"].inputs["Base Color"].links[0].from_node.inputs[
        "Vector"].links[0].from_node
    assert uv_node.uv_map == "UVMap" and [layer.name for layer in cube.data.uv_layers] == ["UVMap"]
    copied, checker = image_bytes(copy), checker_pixels()
    face = footprint(top_uvs, CHECKER, padding_for(CHECKER))
    changed = (copied != checker).any(-1)
    print(f"partial paint: {changed.sum()} of {changed.size} texels of the copy changed, "
          f"{(changed & ~face).sum()} outside the painted face's footprint grown by {padding_for(CHECKER)}")
    assert not (changed & ~face).any() and changed[face].mean() > 0.3
    # every datablock of the artist's keeps a user
    for name in ("Checker", "Red"):
        assert bpy.data.materials[name].users >= 1 and not bpy.data.materials[name].use_fake_user
    assert bpy.data.images["Checker"].users >= 1

    bpy.ops.ed.undo()  # one step takes the whole paint away
    assert state(bpy, bpy.data.objects["Cube"]) == before
    bpy.ops.ed.redo()
    cube = bpy.data.objects["Cube"]
    assert state(bpy, cube) == after

    bpy.ops.object.mode_set(mode="OBJECT")
    after_render = render(bpy, tmp_path / "paint-after.png")
    print(f"Cycles pair of the partial paint: {tmp_path / 'paint-before.png'} {tmp_path / 'paint-after.png'}")
    inside = screen_mask(bpy, cube, top[0])
    diff = np.abs(after_render - before_render).max(-1)
    print(f"Cycles: outside the painted face at most {diff[~inside].max()} levels apart; inside, "
          f"{(diff[inside] > 8).mean():.0%} of pixels changed by more than 8 levels")
    assert diff[~inside].max() <= 2 and (diff[inside] > 8).mean() > 0.3

    path = tmp_path / "kept.blend"
    for _ in range(2):  # a save drops datablocks without users; a packed image goes at the second save
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
        bpy.ops.wm.open_mainfile(filepath=str(path))
        assert state(bpy, bpy.data.objects["Cube"]) == after


def test_a_whole_object_paint_keeps_the_artists_materials_through_two_saves(bpy: ModuleType, service: Service,
                                                                            tmp_path: Path) -> None:
    cube = checker_cube()
    bpy.context.view_layer.objects.active = cube
    cube.select_set(True)
    checker = image_bytes(bpy.data.images["Checker"])
    job = paint(bpy, service, "a wooden crate")
    assert cube.mode == "OBJECT" and len(job.paint.polygons) == 6
    assert [m.name for m in cube.data.materials] == ["Checker", "Red", "Checker (Wooden crate)", "Red (Wooden crate)"]
    assert {p.material_index for p in cube.data.polygons} == {2, 3}
    path = tmp_path / "crate.blend"
    for _ in range(2):
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
        bpy.ops.wm.open_mainfile(filepath=str(path))
    assert {"Checker", "Red"} <= {m.name for m in bpy.data.materials}
    assert np.array_equal(image_bytes(bpy.data.images["Checker"]), checker)
    assert bpy.data.materials["Checker"].users >= 1 and bpy.data.images["Checker"].users >= 1


def tile_bytes(image: object) -> dict[int, np.ndarray]:
    """Each tile of a packed tiled image, decoded."""
    return {p.tile_number: np.asarray(Image.open(io.BytesIO(p.packed_file.data)).convert("RGB"))
            for p in image.packed_files}


def test_udim_tiles_are_painted_and_a_tile_the_selection_misses_is_kept(bpy: ModuleType, service: Service,
                                                                         tmp_path: Path) -> None:
    tiles = {1001: checker_pixels(), 1002: checker_pixels(colours=((200, 60, 60), (240, 240, 240)))}
    for tile, pixels in tiles.items():
        Image.fromarray(pixels).save(tmp_path / f"tiles.{tile}.png")
    image = bpy.data.images.new("Tiles", CHECKER, CHECKER, tiled=True)
    image.tiles.new(1002)
    image.source, image.filepath = "TILED", str(tmp_path / "tiles.<UDIM>.png")
    image.reload()
    image.pack()
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.object
    cube.data.materials.append(image_material("Tiled", image))
    top = polygons_facing(cube, 2, 1.0)
    layer = cube.data.uv_layers["UVMap"]
    for loop in cube.data.polygons[top[0]].loop_indices:  # the top face moves to tile 1002
        layer.uv[loop].vector.x += 1.0
    local = polygon_uvs(cube, "UVMap")[top[0]] - [1.0, 0.0]
    edit_select(cube, top)
    job = paint(bpy, service, "a brass plate")
    assert job.paint.copies == "Tiles"
    copy = base_colour_image(bpy.data.materials["Tiled (Brass plate)"])
    assert copy.source == "TILED" and sorted(t.number for t in copy.tiles) == [1001, 1002]
    painted = tile_bytes(copy)
    assert np.array_equal(painted[1001], tiles[1001])  # no selected face lies in tile 1001
    face = footprint(local, CHECKER, padding_for(CHECKER))
    changed = (painted[1002] != tiles[1002]).any(-1)
    print(f"UDIM in Blender: tile 1001 byte-identical; tile 1002: {changed.sum()} texels changed, "
          f"{(changed & ~face).sum()} outside the painted face's footprint")
    assert not (changed & ~face).any() and changed[face].mean() > 0.3
    assert all(np.array_equal(v, tiles[t]) for t, v in tile_bytes(image).items())  # the original is unchanged


def test_what_the_addon_cannot_read_or_find_is_said(bpy: ModuleType, service: Service, tmp_path: Path) -> None:
    _, timers, _ = support.modules()
    panel = support.submodule("panel")
    cube = checker_cube(procedural_material("Marble", (0.3, 0.3, 0.35)))
    edit_select(cube, polygons_facing(cube, 2, 1.0))
    job = paint(bpy, service, "a gold panel")
    assert len(job.paint.notes) == 1 and "\u201cMarble\u201d is kept around the paint as its viewport colour" \
        in job.paint.notes[0]
    labels = " ".join(text for kind, text in draw(bpy, panel.VIEW3D_PT_latentforge) if kind == "label")
    assert "kept around the paint as its viewport colour" in labels and "Noise Texture" in labels
    assert "Marble" in [m.name for m in cube.data.materials]  # kept, and its faces with it

    bpy.ops.object.mode_set(mode="OBJECT")
    gone = bpy.data.images.new("Gone", 4, 4)
    gone.source, gone.filepath = "FILE", str(tmp_path / "missing" / "gone.png")
    base_colour_image(bpy.data.materials["Checker"])  # the checker stays; a third slot loses its file
    cube.data.materials.append(image_material("Lost", gone))
    cube.data.polygons[0].material_index = len(cube.data.materials) - 1
    edit_select(cube, polygons_facing(cube, 2, 1.0))
    with pytest.raises(RuntimeError, match="The image \u201cGone\u201d of \u201cLost\u201d is not packed and its file"):
        bpy.ops.latentforge.paint()
    assert timers.runtime().jobs.active(bpy.context.scene.session_uid) is None  # nothing was sent
