"""The add-on's scene I/O under real bpy, no server: geometry out (depsgraph, triangulation, world space,
UV seams) and results in (mesh, UV map, packed texture, material, hidden sketch, one undo step)."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
import test_addon_support as support


@pytest.fixture
def bpy() -> ModuleType:
    support.fresh_scene()
    return support.modules()[0]


def add(bpy: ModuleType, kind: str, location: tuple, **kw) -> object:
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(location=location, **kw)
    return bpy.context.object


def three_primitives(bpy: ModuleType) -> list:
    cube = add(bpy, "cube", (2.0, 0.0, 0.0), size=1.0, rotation=(0.0, 0.0, math.radians(45)))
    sphere = add(bpy, "uv_sphere", (0.0, 3.0, 1.0), segments=8, ring_count=4, radius=0.5)
    cylinder = add(bpy, "cylinder", (-1.0, -1.0, 0.5), vertices=8, radius=0.25, depth=2.0)
    cylinder.scale = (1.0, 1.0, 2.0)
    return [cube, sphere, cylinder]


def test_three_primitives_export_triangulated_in_world_space(bpy: ModuleType) -> None:
    geometry = support.submodule("geometry")
    objects = three_primitives(bpy)
    mesh = geometry.export_objects(objects, bpy.context.evaluated_depsgraph_get())
    # vertices: cube 8, sphere 3 rings of 8 + 2 poles, cylinder 2 rings of 8; triangles: cube 6 quads,
    # sphere 2 fans of 8 + 2 bands of 8 quads, cylinder 8 side quads + 2 octagons of 6
    assert mesh.vertices.shape == (8 + 26 + 16, 3) and mesh.vertices.dtype == np.float64  # precision kept
    assert mesh.faces.shape == (12 + (16 + 32) + (16 + 12), 3) and mesh.faces.dtype == np.int32
    assert mesh.faces.min() == 0 and mesh.faces.max() == len(mesh.vertices) - 1
    cube, sphere, cylinder = mesh.vertices[:8], mesh.vertices[8:34], mesh.vertices[34:]
    half_diagonal = math.sqrt(2) / 2  # a unit cube turned 45° about z
    np.testing.assert_allclose(cube.min(0), [2 - half_diagonal, -half_diagonal, -0.5], atol=1e-5)
    np.testing.assert_allclose(cube.max(0), [2 + half_diagonal, half_diagonal, 0.5], atol=1e-5)
    np.testing.assert_allclose(sphere[:, 2].min(), 0.5, atol=1e-5)  # poles at z = 1 ± 0.5
    np.testing.assert_allclose(sphere[:, 2].max(), 1.5, atol=1e-5)
    np.testing.assert_allclose(cylinder.min(0), [-1.25, -1.25, -1.5], atol=1e-5)  # depth 2 scaled ×2 in z
    np.testing.assert_allclose(cylinder.max(0), [-0.75, -0.75, 2.5], atol=1e-5)
    np.testing.assert_allclose(mesh.center(), (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2)


def test_modifiers_are_applied_and_the_object_is_left_alone(bpy: ModuleType) -> None:
    geometry = support.submodule("geometry")
    cube = add(bpy, "cube", (0.0, 0.0, 0.0), size=1.0)
    array = cube.modifiers.new("Array", "ARRAY")
    array.count, array.relative_offset_displace = 3, (1.0, 0.0, 0.0)
    mesh = geometry.export_objects([cube], bpy.context.evaluated_depsgraph_get())
    assert len(mesh.vertices) == 3 * 8 and len(mesh.faces) == 3 * 12
    np.testing.assert_allclose(mesh.vertices[:, 0].max(), 2.5, atol=1e-5)
    assert len(cube.data.vertices) == 8 and len(cube.data.polygons) == 6  # quads stay quads in the scene


@pytest.mark.parametrize(("kinds", "single", "expected"), [
    ((), False, "Nothing is selected"),
    (("camera",), False, "is a camera, not a mesh"),
    (("mesh", "empty"), False, "is an empty, not a mesh"),
    (("armature",), False, "is an armature, not a mesh"),
    (("mesh", "mesh"), True, "2 objects are selected"),
    (("mesh",), True, None),
])
def test_selection_problems_are_sentences(bpy: ModuleType, kinds: tuple, single: bool, expected: str | None) -> None:
    geometry = support.submodule("geometry")
    objects = []
    for kind in kinds:
        if kind == "mesh":
            objects.append(add(bpy, "cube", (0.0, 0.0, 0.0)))
        else:
            getattr(bpy.ops.object, f"{kind}_add")()
            objects.append(bpy.context.object)
    problem = geometry.selection_problem(objects, single=single)
    assert (problem is None) if expected is None else (expected in problem)


def test_paint_export_splits_uv_seams_and_keeps_corner_order(bpy: ModuleType) -> None:
    geometry = support.submodule("geometry")
    cube = add(bpy, "cube", (1.0, 2.0, 3.0), size=2.0)
    mesh = geometry.export_objects([cube], bpy.context.evaluated_depsgraph_get(), with_uvs=True)
    vertices, faces, uvs = geometry.per_vertex_uvs(mesh)
    assert 8 < len(vertices) <= 24  # a cube's UV seams split some of its 8 corners
    assert uvs.shape == (len(vertices), 2) and faces.shape == mesh.faces.shape
    np.testing.assert_array_equal(uvs[faces], mesh.uvs)  # every corner keeps its UV...
    np.testing.assert_allclose(vertices[faces], mesh.vertices[mesh.faces])  # ...and its position
    per_loop = np.empty(len(cube.data.loops) * 2, np.float32)
    cube.data.uv_layers.active.uv.foreach_get("vector", per_loop)
    np.testing.assert_array_equal(per_loop.reshape(-1, 2)[mesh.loops], mesh.uvs)  # loops map back


def test_paint_refuses_modifiers_that_change_topology(bpy: ModuleType) -> None:
    geometry = support.submodule("geometry")
    cube = add(bpy, "cube", (0.0, 0.0, 0.0))
    cube.modifiers.new("Subdivision", "SUBSURF")
    with pytest.raises(ValueError, match=r"modifiers that change its faces \(Subdivision\)"):
        geometry.export_objects([cube], bpy.context.evaluated_depsgraph_get(), with_uvs=True)


def tetrahedron() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) + np.float32([4, 5, 6])
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    uvs = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]], np.float32)
    return vertices, faces, uvs


def test_generated_result_becomes_a_textured_object_and_the_sketch_is_hidden(bpy: ModuleType) -> None:
    results = support.submodule("results")
    sketch = three_primitives(bpy)
    vertices, faces, uvs = tetrahedron()
    anchor = (4.5, 5.5, 6.5)
    obj = results.import_generated(bpy.context.scene, "a red toadstool", vertices, faces, uvs,
                                   support.png_bytes((1, 0, 0, 1), 16), anchor, sketch)
    assert obj.name == "Red toadstool" and obj.type == "MESH"
    np.testing.assert_allclose(obj.location, anchor)
    co, loops = support.mesh_arrays(obj)
    np.testing.assert_allclose(co + np.float32(anchor), vertices, atol=1e-6)  # world space is unchanged
    np.testing.assert_array_equal(loops, faces.ravel())
    layer = obj.data.uv_layers[results.UV_LAYER]
    per_loop = np.empty(len(obj.data.loops) * 2, np.float32)
    layer.uv.foreach_get("vector", per_loop)
    np.testing.assert_allclose(per_loop.reshape(-1, 2), uvs[faces.ravel()])
    material = obj.data.materials[0]
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE").image
    assert image.packed_file is not None and tuple(image.size) == (16, 16)
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node.image == image
    hidden = next(c for c in bpy.data.collections if c.name.endswith("sketch"))
    assert set(hidden.objects) == set(sketch) and hidden.hide_viewport and hidden.hide_render
    assert all(len(o.users_collection) == 1 for o in sketch)  # moved, not duplicated or deleted


def paint_job(cube: object, prompt: str, uv_map: str | None = None, polygons: np.ndarray | None = None) -> object:
    """A finished paint job of `cube` (all its faces unless `polygons`), as the Paint operator leaves it."""
    jobs = support.submodule("jobs")
    mesh = cube.data
    polygons = np.arange(len(mesh.polygons)) if polygons is None else np.asarray(polygons)
    slots = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("material_index", slots)
    loops = np.array([[p.loop_indices[0], p.loop_indices[k], p.loop_indices[k + 1]] for p in mesh.polygons
                      for k in (1, 2)], np.int32)  # a quad's two triangles
    job = jobs.Job(scene=0, task="paint", prompt=prompt, loops=loops)
    job.paint = jobs.PaintPlan(polygons, slots[polygons], uv_map)
    return job


def service_uvs(cube: object, job: object) -> np.ndarray:
    """[F, 3, 2] new UVs for the sent triangles' corners, one per mesh loop (as a service's unwrap gives)."""
    per_loop = np.random.default_rng(0).random((len(cube.data.loops), 2)).astype(np.float32)
    return per_loop[job.loops]


def test_a_paint_result_adds_a_slot_and_keeps_the_vertices_uv_maps_and_materials(bpy: ModuleType) -> None:
    painting, results = support.submodule("painting"), support.submodule("results")
    cube = add(bpy, "cube", (0.0, 0.0, 0.0))
    before, loops_before = support.mesh_arrays(cube)
    job = paint_job(cube, "oak", uv_map="UVMap")
    corner_uvs = service_uvs(cube, job)
    painting.apply_painted(cube, job, corner_uvs, support.png_bytes((0.5, 0.3, 0.1, 1)), {})
    after, loops_after = support.mesh_arrays(cube)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(loops_before, loops_after)
    # the service's UVs differ from UVMap: a new map, while UVMap stays the one materials read by default
    assert [layer.name for layer in cube.data.uv_layers] == ["UVMap", results.UV_LAYER]
    assert cube.data.uv_layers["UVMap"].active_render
    assert [m.name if m else None for m in cube.data.materials] == [None, "Oak"]  # no material, still on slot 0
    assert {p.material_index for p in cube.data.polygons} == {1}


def test_painting_again_keeps_the_artists_slot_and_leaves_nothing_of_the_first_paint(bpy: ModuleType) -> None:
    painting, results = support.submodule("painting"), support.submodule("results")
    cube = add(bpy, "cube", (0.0, 0.0, 0.0))
    own = bpy.data.materials.new("Artist's own")  # an artist's material keeps its slot, used or not
    cube.data.materials.append(own)
    for prompt in ("oak", "walnut"):
        job = paint_job(cube, prompt, uv_map=results.UV_LAYER)
        corner_uvs = service_uvs(cube, job)  # the same both times: the service kept the first paint's UVs
        painting.apply_painted(cube, job, corner_uvs, support.png_bytes((0.5, 0.3, 0.1, 1)), {})
    assert [m.name for m in cube.data.materials] == ["Artist's own", "Artist's own (Walnut)"]
    assert cube[results.PROMPT_PROPERTY] == "walnut" and own.users == 1
    assert sorted(m.name for m in bpy.data.materials) == ["Artist's own", "Artist's own (Walnut)"]
    assert [i.name for i in bpy.data.images] == ["Walnut texture"]
    assert [layer.name for layer in cube.data.uv_layers] == ["UVMap", results.UV_LAYER]  # the second paint's reused


LONG_PROMPT = ("a weathered bronze statue of a monkey holding a lantern, green patina in the folds, moss on "
               "the plinth, chipped stone steps, soft morning light, photographed for a museum catalogue, "
               "highly detailed, 8k")


@pytest.mark.parametrize("prompt", [LONG_PROMPT, "an " + "übergroßer Pilz mit Tupfen " * 8],
                         ids=["ascii", "utf8"])
def test_long_prompts_give_whole_word_names_and_stay_on_the_object(bpy: ModuleType, prompt: str) -> None:
    results = support.submodule("results")
    limit = results.name_limit()
    assert limit == bpy.types.ID.bl_rna.properties["name"].length_max - 1 and limit >= 63
    vertices, faces, uvs = tetrahedron()
    obj = results.import_generated(bpy.context.scene, prompt, vertices, faces, uvs,
                                   support.png_bytes((1, 0, 0, 1)), (0.0, 0.0, 0.0), [add(bpy, "cube", (0, 0, 0))])
    material = obj.data.materials[0]
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE").image
    for name in (obj.name, obj.data.name, material.name, image.name, f"{obj.name} sketch"):
        assert len(name.encode("utf-8")) <= 63, name  # the limit before Blender 5.0, and a readable one
    support.assert_whole_words(obj.name, prompt, 63 - results.LONGEST_SUFFIX, results.DANGLING)
    assert obj.name.split()[-1].lower() not in results.DANGLING
    assert image.name == f"{obj.name} texture" and material.name == obj.name
    assert obj[results.PROMPT_PROPERTY] == prompt


def test_a_result_is_one_undo_step(bpy: ModuleType) -> None:
    _, timers, _ = support.modules()
    jobs = support.submodule("jobs")
    sketch = three_primitives(bpy)
    bpy.ops.ed.undo_push(message="sketch")
    rt = timers.runtime()
    job = rt.jobs.add(jobs.Job(scene=bpy.context.scene.session_uid, task="generate", prompt="a teddy bear",
                               job="0" * 32, state="running", sketch=[o.session_uid for o in sketch]))
    vertices, faces, uvs = tetrahedron()
    event = {"type": "result", "job": job.job, "arrays": {"vertices": vertices, "faces": faces, "uvs": uvs},
             "blobs": {"texture": support.png_bytes((0, 1, 0, 1))}}
    timers.HANDLERS["result"](rt, event)  # what the timer does with a result event
    assert "Teddy bear" in bpy.data.objects and job.state == "finished"
    assert bpy.context.view_layer.objects.active.name == "Teddy bear"
    assert [o.name for o in bpy.context.selected_objects] == ["Teddy bear"]
    bpy.ops.ed.undo()
    assert "Teddy bear" not in bpy.data.objects and "Teddy bear" not in bpy.data.meshes
    assert not any(c.name.endswith("sketch") for c in bpy.data.collections)
    assert {o.name for o in bpy.context.scene.objects} == {"Cube", "Sphere", "Cylinder"}


class FakeLayout:
    """Stands in for bpy's UILayout (which only exists while a window region draws, never headless) and
    checks what a draw function asks for: properties, operators and icons that exist."""

    def __init__(self, bpy: ModuleType, log: list) -> None:
        self.bpy, self.log = bpy, log
        self.icons = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

    def __getattr__(self, name: str) -> object:  # use_property_split, scale_y, enabled...
        return None

    def _sub(self, *_: object, **__: object) -> FakeLayout:
        return FakeLayout(self.bpy, self.log)

    row = column = box = split = grid_flow = _sub

    def _check(self, function: str, icon: str = "NONE", **kwargs: object) -> None:
        """The keywords must be ones bpy's UILayout function takes, the icon one Blender has."""
        assert icon in self.icons, f"no icon {icon!r}"
        known = self.bpy.types.UILayout.bl_rna.functions[function].parameters.keys()
        assert set(kwargs) <= set(known), f"UILayout.{function} takes no {set(kwargs) - set(known)}"

    def prop(self, data: object, name: str, **kwargs: object) -> None:
        assert name in data.bl_rna.properties, f"no property {name!r}"
        self._check("prop", **kwargs)
        self.log.append(("prop", name))

    def operator(self, idname: str, **kwargs: object) -> OperatorProperties:
        module, name = idname.split(".")
        rna = getattr(getattr(self.bpy.ops, module), name).get_rna_type()  # raises for an unknown operator
        self._check("operator", **kwargs)
        self.log.append(("operator", idname))
        return OperatorProperties(rna, idname, self.log)

    def label(self, **kwargs: object) -> None:
        self._check("label", **kwargs)
        self.log.append(("label", kwargs.get("text", "")))

    def progress(self, **kwargs: object) -> None:
        self._check("progress", **kwargs)
        assert 0 <= kwargs["factor"] <= 1
        self.log.append(("progress", kwargs["text"]))

    def template_ID(self, data: object, name: str, **kwargs: object) -> None:  # noqa: N802 - bpy's name
        assert name in data.bl_rna.properties, f"no property {name!r}"
        self._check("template_ID", **kwargs)
        self.log.append(("template_ID", name))

    def template_icon(self, **kwargs: object) -> None:
        self._check("template_icon", **kwargs)
        self.log.append(("preview", kwargs["icon_value"]))

    def separator(self) -> None:
        pass


class OperatorProperties:
    """What `layout.operator` returns: setting a property the operator lacks fails, as in Blender."""

    def __init__(self, rna: object, idname: str, log: list) -> None:
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "_where", (idname, log))

    def __setattr__(self, name: str, value: object) -> None:
        idname, log = self._where
        assert name in self._rna.properties, f"{idname} has no property {name!r}"
        log.append(("operator property", f"{idname}.{name}={value}"))


class Drawer:
    """`self` for a draw method: the real object's attributes, and a fake layout."""

    def __init__(self, real: object, layout: FakeLayout) -> None:
        self._real, self.layout = real, layout

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def draw(bpy: ModuleType, cls: type, real: object = None) -> list:
    log: list = []
    cls.draw(Drawer(real if real is not None else cls, FakeLayout(bpy, log)), bpy.context)
    return log


def test_panel_preferences_and_subpanel_draw_every_state(bpy: ModuleType) -> None:
    _, timers, prefs = support.modules()
    panel, jobs = support.submodule("panel"), support.submodule("jobs")
    rt = timers.runtime()
    rt.server = jobs.ServerStatus(False, "cannot reach the server at tcp://127.0.0.1:5555: no reply")
    log = draw(bpy, panel.VIEW3D_PT_latentforge)
    assert ("label", "Not connected") in log and ("operator", "latentforge.generate") in log
    rt.server = jobs.ServerStatus(True, "", {"server": "latentforge", "version": "0.1.0", "models": ["sd:x"],
                                             "workers": 1, "queue": 2})
    job = rt.jobs.add(jobs.Job(scene=bpy.context.scene.session_uid, task="generate", prompt="a teddy bear",
                               job="f" * 32, state="running", stage="latent", step=30, total=120, eta_s=75))
    job.preview = timers.show_preview(support.png_bytes((0.2, 0.4, 0.6, 1)))
    log = draw(bpy, panel.VIEW3D_PT_latentforge)
    assert ("progress", "Latent 30/120  ·  1 min 15 s left") in log
    assert ("label", "Workers: 1  ·  Queue: 2") in log and any(kind == "preview" for kind, _ in log)
    rt.server.update({"type": "heartbeat", "workers": 3, "queue": 0, "models": ["sd:y"]})  # a status push
    assert ("label", "Workers: 3  ·  Queue: 0") in draw(bpy, panel.VIEW3D_PT_latentforge)
    job.fail({"code": "no_surface", "message": "the optimised field is empty: its peak density is 3.1",
              "details": {"peak_density": 3.1, "lowest_density": 0.0, "threshold": 10.0,
                          "suggested_threshold": 1.55, "reexport": True}})
    log = draw(bpy, panel.VIEW3D_PT_latentforge)
    assert ("operator", "latentforge.reexport") in log and "Re-export at 1.55" in job.message
    assert bpy.ops.latentforge.reexport.poll()  # offered: pressing it is tested against a real service
    job.fail({"code": "model_not_found", "message": "the worker could not load sd:x: " + "no such file " * 8})
    assert ("operator", "latentforge.reexport") not in draw(bpy, panel.VIEW3D_PT_latentforge)
    log = draw(bpy, panel.VIEW3D_PT_latentforge)
    error = " ".join(text for kind, text in log if kind == "label")
    assert "the worker could not load sd:x: no such file" in error and "no such file no such file" in error
    bpy.context.scene.latentforge.mode = "PAINT"
    assert ("operator", "latentforge.paint") in draw(bpy, panel.VIEW3D_PT_latentforge)
    assert ("operator", "latentforge.fetch") in draw(bpy, panel.VIEW3D_PT_latentforge_advanced)
    assert ("prop", "server_key_file") in draw(bpy, type(prefs.get()), prefs.get())


def test_text_only_results_move_to_the_cursor_and_fetched_ones_stay_put() -> None:
    landing, jobs = support.submodule("landing"), support.submodule("jobs")
    vertices = np.array([[-1, -1, 0], [1, 1, 2]], np.float32)
    text = jobs.Job(scene=0, task="generate", anchor=(5.0, 0.0, 0.0))
    world, anchor = landing.placement(text, vertices)
    np.testing.assert_allclose(world, vertices + [5, 0, 0])
    assert anchor == (5.0, 0.0, 0.0)
    sketched = jobs.Job(scene=0, task="generate", anchor=(1.0, 2.0, 3.0), sketch=[7])
    world, anchor = landing.placement(sketched, vertices)  # sent relative to the sketch's centre, and back
    np.testing.assert_array_equal(world, vertices + [1, 2, 3])
    assert anchor == (1.0, 2.0, 3.0)
    world, anchor = landing.placement(jobs.Job(scene=0, task="fetch"), vertices)
    np.testing.assert_array_equal(world, vertices)
    assert anchor == (0.0, 0.0, 1.0)


def test_the_front_follows_the_turned_sketch_and_the_panel_says_where(bpy: ModuleType) -> None:
    geometry, panel = support.submodule("geometry"), support.submodule("panel")
    _, timers, _ = support.modules()
    timers.runtime()
    cube = add(bpy, "cube", (1.0, 0.0, 0.0), size=1.0)
    bpy.context.view_layer.update()
    assert geometry.front_of(bpy.context) == 0.0
    assert ("label", "Front faces −Y (Blender's front view)") in draw(bpy, panel.VIEW3D_PT_latentforge)
    cube.rotation_euler = (0.0, 0.0, math.radians(90))  # the artist turns the blockout to face +X
    bpy.context.view_layer.update()
    assert geometry.front_of(bpy.context) == pytest.approx(90.0)
    assert ("label", "Front faces +X") in draw(bpy, panel.VIEW3D_PT_latentforge)
    bpy.context.scene.latentforge.mode = "TEXT"  # text only lands at the cursor, facing the world's front
    assert geometry.front_of(bpy.context) == 0.0
