"""Jobs that survive what an artist does meanwhile, end to end: the add-on in real bpy against a real
`latentforge serve` (the tiny CPU pipeline, one service for the module). A paint whose mesh was edited
meanwhile, or whose file was closed, is held with the reason instead of landing wrong; Fetch finds the object a
paint was made for, after a restart too, and never duplicates; a linked duplicate's other users keep their
mesh; mirrored and far-away sketches are sent so the service sees them as they are; a server's refusal reaches
the panel in its own words; the panel's default Quality runs to a result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import test_addon_support as support
import torch
from addon_scenes import checker_cube, edit_select, plain_material, polygons_facing
from test_addon_scene import draw
from test_addon_service import (
    JOB_TIMEOUT_S,
    TINY_GENERATE,
    TINY_PAINT,
    Service,
    configure,
    connected_scene,
    run_to_end,
    scene_job,
    serving,
)

from backend.mesh import Mesh
from backend.sketch import SketchConfig, SketchShape

pytestmark = pytest.mark.slow  # the tests run paint and generate jobs on the service

LONG_PAINT = {**TINY_PAINT, "iters": 400}  # long enough to edit the mesh while it runs


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with serving(tmp_path_factory.mktemp("service"), timeout_s=5.0) as server:
        yield server


@pytest.fixture
def bpy(service: Service) -> ModuleType:
    return connected_scene()


def start_paint(bpy: ModuleType, obj: object, overrides: dict = LONG_PAINT, **kwargs: object) -> object:
    """Select `obj`, press Paint, and pump until its job steps."""
    for other in bpy.context.scene.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj
    configure(bpy, "a wooden crate", "PAINT", overrides)
    assert bpy.ops.latentforge.paint(**kwargs) == {"FINISHED"}
    job = scene_job(bpy)
    support.pump(lambda: job.step > 0 or not job.active, JOB_TIMEOUT_S, "the paint to run")
    return job


def slots(obj: object) -> list:
    indices = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", indices)
    return [[m.name if m else None for m in obj.data.materials], indices.tolist()]


def datablocks(bpy: ModuleType) -> dict:
    """Every object, mesh, material and image of the open file, by name, with what an edit would change."""
    meshes = [(m.name, len(m.polygons), tuple(x.name for x in m.materials if x)) for m in bpy.data.meshes]
    return {"objects": sorted((o.name, tuple(o.location)) for o in bpy.data.objects), "meshes": sorted(meshes),
            "materials": sorted(m.name for m in bpy.data.materials), "images": sorted(i.name for i in bpy.data.images)}


def delete_two_faces(mesh: object) -> None:
    import bmesh  # a Blender module: only once the harness has imported bpy

    bm = bmesh.new()
    bm.from_mesh(mesh)
    bmesh.ops.delete(bm, geom=list(bm.faces)[:2], context="FACES_ONLY")
    bm.to_mesh(mesh)
    bm.free()


def extrude_top(mesh: object) -> None:
    import bmesh

    bm = bmesh.new()
    bm.from_mesh(mesh)
    top = [f for f in bm.faces if f.normal.z > 0.9]
    made = bmesh.ops.extrude_face_region(bm, geom=top)["geom"]
    bmesh.ops.translate(bm, vec=(0.0, 0.0, 0.3), verts=[v for v in made if isinstance(v, bmesh.types.BMVert)])
    bm.to_mesh(mesh)
    bm.free()


@pytest.mark.parametrize("edit", [delete_two_faces, extrude_top], ids=["delete-faces", "extrude"])
def test_a_mesh_edited_mid_paint_keeps_the_edit_and_its_result_waits_to_be_imported(
        bpy: ModuleType, service: Service, edit: object) -> None:
    cube = checker_cube()
    job = start_paint(bpy, cube)
    edit(cube.data)  # the artist goes on modelling while the paint runs
    edited = (support.mesh_arrays(cube), slots(cube))
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished" and job.held and "changed since Paint (6 faces then" in job.held, job.held
    mine = (support.mesh_arrays(cube), slots(cube))  # nothing of the edit undone, nothing painted
    assert all(np.array_equal(a, b) for a, b in zip(mine[0], edited[0], strict=True)) and mine[1] == edited[1]
    assert (Path(job.result_dir) / "texture.png").is_file()  # the paint is kept on disk all the same
    panel = support.submodule("panel")
    shown = draw(bpy, panel.VIEW3D_PT_latentforge)
    assert ("operator", "latentforge.import_result") in shown and ("operator", "latentforge.discard_result") in shown
    assert bpy.ops.latentforge.import_result(job=job.job, how="NEW") == {"FINISHED"}
    new = bpy.context.view_layer.objects.active
    assert new != cube and new.data.materials[0].name == "Wooden crate" and not job.held
    np.testing.assert_allclose(new.location, (0.0, 0.0, 0.5), atol=1e-4)  # where the cube was when sent
    assert bpy.ops.latentforge.paint.poll()  # the scene can start its next job


def test_a_paint_whose_object_was_deleted_is_held_and_applies_to_a_mesh_of_the_same_topology(
        bpy: ModuleType, service: Service) -> None:
    cube = checker_cube()
    job = start_paint(bpy, cube)
    bpy.data.objects.remove(cube)  # the artist deletes it meanwhile
    job, _ = run_to_end(bpy, service)
    assert job.held and "\u201cCube\u201d is no longer in this file" in job.held, job.held
    assert list(bpy.data.objects) == []
    again = checker_cube()  # the same mesh made again: its faces fit the texture
    bpy.context.view_layer.objects.active = again
    shown = draw(bpy, support.submodule("panel").VIEW3D_PT_latentforge)
    assert ("operator property", "latentforge.import_result.how=ACTIVE") in shown
    assert bpy.ops.latentforge.import_result(job=job.job, how="ACTIVE") == {"FINISHED"}
    assert slots(again)[0] == ["Checker.001", "Red.001", "Checker.001 (Wooden crate)", "Red.001 (Wooden crate)"]
    assert not job.held and list(bpy.data.objects) == [again]


def test_a_paint_whose_file_was_closed_never_lands_in_another_and_fetch_paints_it_once_reopened(
        bpy: ModuleType, service: Service, tmp_path: Path) -> None:
    _, timers, _ = support.modules()
    chair, other = tmp_path / "chair.blend", tmp_path / "other.blend"
    bpy.ops.mesh.primitive_monkey_add()
    bpy.ops.wm.save_as_mainfile(filepath=str(other))
    support.fresh_scene()
    cube = checker_cube()
    bpy.ops.wm.save_as_mainfile(filepath=str(chair))
    job = start_paint(bpy, cube)
    bpy.ops.wm.save_mainfile()  # with the job's id, as Blender asks before another file opens
    bpy.ops.wm.open_mainfile(filepath=str(other))  # open when the result comes
    objects = datablocks(bpy)
    support.pump(lambda: not job.active, JOB_TIMEOUT_S, "the result")  # its scene is not this file's
    assert job.held and "belongs to \u201cchair.blend\u201d" in job.held, job.held
    assert datablocks(bpy) == objects  # not a datablock of this file touched
    shown = draw(bpy, support.submodule("panel").VIEW3D_PT_latentforge)  # said here, and keepable here too
    assert "belongs to \u201cchair.blend\u201d" in " ".join(text for kind, text in shown if kind == "label")
    assert ("operator property", "latentforge.import_result.how=NEW") in shown

    bpy.ops.wm.open_mainfile(filepath=str(chair))
    cube = bpy.data.objects["Cube"]
    before = support.mesh_arrays(cube)
    assert bpy.ops.latentforge.fetch() == {"FINISHED"}  # the panel's Job ID: the scene's last job
    assert slots(cube)[0] == ["Checker", "Red", "Checker (Wooden crate)", "Red (Wooden crate)"]
    assert [o.name for o in bpy.data.objects] == ["Cube"] and not timers.runtime().results
    assert all(np.array_equal(a, b) for a, b in zip(support.mesh_arrays(cube), before, strict=True))
    painted = slots(cube)
    for _ in range(2):  # again: nothing more, and the job never goes back to running
        assert bpy.ops.latentforge.fetch() == {"FINISHED"}
        support.pump(lambda: True, 1, "events")
        assert slots(cube) == painted and len(bpy.data.objects) == 1 and not scene_job(bpy).active


def test_fetch_after_a_restart_paints_the_object_it_was_painted_for_and_never_duplicates(
        bpy: ModuleType, service: Service, tmp_path: Path) -> None:
    from backend.service.client import Client

    _, timers, _ = support.modules()
    path = tmp_path / "chair.blend"
    cube = checker_cube()
    job = start_paint(bpy, cube, TINY_PAINT)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    job_id = job.job
    timers.stop()  # Blender quits before the result is in
    with Client(service.endpoint, timeout_s=10.0) as client:
        client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
    timers.start()  # and starts again, with the file
    bpy.ops.wm.open_mainfile(filepath=str(path))
    support.pump(lambda: timers.runtime().server.connected, 30, "the connection")
    cube = bpy.data.objects["Cube"]
    assert bpy.ops.latentforge.fetch(job=job_id) == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished" and not job.held, job.held
    assert [o.name for o in bpy.data.objects] == ["Cube"]  # painted, not a triangulated copy on top
    assert slots(cube)[0] == ["Checker", "Red", "Checker (Wooden crate)", "Red (Wooden crate)"]
    assert "latentforge_paint" not in cube and cube["latentforge_job"] == job_id
    assert bpy.ops.latentforge.fetch(job=job_id) == {"FINISHED"}  # already there: no second copy, no job
    assert [o.name for o in bpy.data.objects] == ["Cube"] and scene_job(bpy) is job and not job.active


@pytest.mark.parametrize(("shared", "edit_mode"), [("SINGLE", False), ("ALL", False), ("SINGLE", True)],
                         ids=["single-user", "all-users", "single-user-edit-mode"])
def test_painting_one_of_two_linked_duplicates(bpy: ModuleType, service: Service, shared: str,
                                               edit_mode: bool) -> None:
    panel = support.submodule("panel")
    cube = checker_cube()
    twin = cube.copy()  # Alt+D: the same mesh, with its own object-linked material on its first slot
    bpy.context.scene.collection.objects.link(twin)
    twin.material_slots[0].link = "OBJECT"
    twin.material_slots[0].material = plain_material("Twin's own", (0.1, 0.6, 0.1))
    twin_before = (twin.data, slots(twin), [s.material.name for s in twin.material_slots])
    bpy.context.scene.latentforge.shared_mesh = shared
    for other in bpy.context.scene.objects:
        other.select_set(other == cube)
    bpy.context.scene.latentforge.mode = "PAINT"
    assert ("label", "The mesh is shared by 2 objects") in draw(bpy, panel.VIEW3D_PT_latentforge)
    if shared == "ALL":  # never without the artist's yes
        configure(bpy, "a wooden crate", "PAINT", TINY_PAINT)
        with pytest.raises(RuntimeError, match="shared by 2 objects: confirm painting them all"):
            bpy.ops.latentforge.paint()
    if edit_mode:  # a partial paint: the top face
        edit_select(cube, polygons_facing(cube, 2, 1.0))
    start_paint(bpy, cube, TINY_PAINT, confirm_shared=shared == "ALL")
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished" and not job.held, job.held
    assert cube.mode == ("EDIT" if edit_mode else "OBJECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    assert "Checker (Wooden crate)" in slots(cube)[0]
    if shared == "SINGLE":  # the twin keeps its mesh, slots and own material as they were
        assert cube.data != twin.data and twin.data.users == 1
        assert (twin.data, slots(twin), [s.material.name for s in twin.material_slots]) == twin_before
    else:  # both show the painted mesh, as the artist confirmed
        assert cube.data == twin.data and "Checker (Wooden crate)" in slots(twin)[0]


def test_a_mirrored_part_far_from_the_origin_is_sent_outward_and_the_default_quality_lands_it(
        bpy: ModuleType, service: Service) -> None:
    far = np.array([1e5, -2e5, 3.0])
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=tuple(far))
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=tuple(far + [0.6, 0.0, 0.0]))
    bpy.context.object.scale = (-1.0, 1.0, 1.0)  # the artist's S X -1: a mirrored part overlapping the first
    for obj in bpy.context.scene.objects:
        obj.select_set(True)
    settings = bpy.context.scene.latentforge
    configure(bpy, "a toadstool", "GENERATE", {
        **TINY_GENERATE, "optim": {"iters": 10}, "refine": {"iters": 2, "resolution": 16},
        "mesh": {"iters": 2, "resolution": 16, "grid_resolution": 12}})
    settings.quality = "standard"  # the panel's default: every stage
    assert settings.quality == support.submodule("choices").DEFAULTS["presets"]
    bpy.ops.latentforge.generate()
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished" and not job.held, (job.message, job.held)
    result = bpy.context.view_layer.objects.active
    # its origin where the sketch's centre is (as near as Blender's float32 location gets out there), its mesh
    # relative to it in full detail
    np.testing.assert_allclose(np.array(result.location), far + [0.3, 0.0, 0.0], atol=0.02)
    local, loops = support.mesh_arrays(result)
    corners = local[loops.reshape(-1, 3)].astype(np.float64)
    areas = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1) / 2
    assert np.abs(local).max() < 2.0 and (areas > 1e-9).mean() > 0.99
    normal_map = [n for n in result.data.materials[0].node_tree.nodes if n.type == "NORMAL_MAP"]
    assert normal_map  # the refined mesh's normal map came with it: every stage ran
    # what the service received (relative to the sketch's centre): its inside test finds both parts' insides,
    # the overlap included, inside
    inputs = service.jobs / job.job / "inputs"
    shape = SketchShape(Mesh(np.load(inputs / "vertices.npy"), np.load(inputs / "faces.npy")),
                        SketchConfig(grid_resolution=32))
    # the first cube's centre, the overlap, the mirrored cube's centre, and its far side
    points = shape.frame.to_unit(np.array([[-0.3, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.5, 0.0, 0.0]]))
    occupancy, _ = shape.lookup(torch.as_tensor(points))
    assert (occupancy > 0.5).all(), occupancy


def test_modifiers_are_refused_before_paint_and_a_server_refusal_is_shown_in_its_own_words(
        bpy: ModuleType, service: Service) -> None:
    panel = support.submodule("panel")
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    cube.modifiers.new("Mirror", "MIRROR")
    bpy.context.view_layer.update()  # what the viewport does before the panel draws again
    configure(bpy, "a wooden crate", "PAINT", TINY_PAINT)
    reason = "\"Cube\" has modifiers that change its faces (Mirror)"
    assert not bpy.ops.latentforge.paint.poll() and panel.paint_scope(bpy.context).startswith(reason)
    with pytest.raises(RuntimeError, match=r"has modifiers that change its faces \(Mirror\)"):
        bpy.ops.latentforge.paint()
    cube.modifiers.clear()
    layer = cube.data.uv_layers.active.uv  # one face straddles UDIM tiles 1001 and 1002
    for loop in cube.data.polygons[0].loop_indices[:2]:
        layer[loop].vector.x += 1.0
    assert bpy.ops.latentforge.paint() == {"FINISHED"}
    job, _ = run_to_end(bpy, service, 60)
    assert job.state == "failed" and "crosses UDIM tiles" in job.message, job.message
    assert "split the UV islands at the tile borders" in job.message and "modifiers" not in job.message
