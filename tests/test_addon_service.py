"""End to end: the add-on in real bpy against a real `latentforge serve` on loopback, running the tiny
TargetGuidance pipeline on the CPU. Blender has no event loop headless, so each test drives the add-on's
timer callback itself (support.pump) while the connection thread talks to the service.

The picture of the generated result is rendered with Cycles to `<tmp>/generate-result.png` (pytest's
tmp_path of test_generate_from_three_primitives; the path is printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import test_addon_support as support
from test_addon_scene import draw

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "backend" / "examples" / "toadstool" / "target.glb"
TINY_GENERATE = {
    "resolution": 16, "optim": {"iters": 30}, "refine": {"iters": 0}, "mesh": {"iters": 0},
    "nerf": {"levels": 4, "log2_table_size": 12, "max_resolution": 64}, "render": {"samples": 16},
    "export": {"grid_resolution": 32, "texture_size": 64, "max_faces": 2000, "density_threshold": 5.0},
    "sketch": {"grid_resolution": 32}, "loop": {"preview_every_s": 0.2},
}
TINY_PAINT = {"resolution": 16, "iters": 30, "texture_size": 64, "loop": {"preview_every_s": 0.2}}
pytestmark = pytest.mark.slow  # each test runs the service's optimisation loop
JOB_TIMEOUT_S = 240  # a tiny job takes seconds on an idle 2-core machine, minutes on a busy one


def with_iters(overrides: dict, iters: int) -> dict:
    return {**overrides, "optim": {**overrides["optim"], "iters": iters}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`latentforge serve` as a child process group (the service and its worker), which a test may kill."""

    def __init__(self, root: Path) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.jobs, self.log = root / "jobs", root / "service.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend", "serve", "--bind", self.endpoint, "--model", f"target:{TARGET}",
                 "--device", "cpu", "--workers", "1", "--jobs", str(self.jobs)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for_worker()

    def wait_for_worker(self, timeout_s: float = 300.0) -> None:  # torch imports slowly on a busy machine
        from backend.service.client import Client, ServiceError

        deadline = time.monotonic() + timeout_s
        with Client(self.endpoint, timeout_s=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the service exited:\n{self.tail()}"
                try:
                    if client.hello().get("workers", 0) >= 1:
                        return
                except ServiceError:
                    pass
                time.sleep(0.5)
        raise AssertionError(f"no worker joined within {timeout_s:g} s:\n{self.tail()}")

    def worker_pids(self) -> list[int]:
        """The service's worker processes (its children)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group we started (service and worker), as a crash or a shutdown would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)
        self.process = None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextlib.contextmanager
def serving(root: Path, **settings: object) -> Iterator[Service]:
    """A service under `root`, and the add-on's preferences pointed at it with `settings` until it stops."""
    server = Service(root)
    server.start()
    _, _, prefs = support.modules()
    p = prefs.get()
    saved = {name: getattr(p, name) for name in ("server_address", *settings)}
    for name, value in settings.items():
        setattr(p, name, value)
    p.server_address = server.endpoint  # the update callback reconnects
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)
        for name, value in saved.items():
            setattr(p, name, value)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # notice a dead server in seconds; keep every preview
    with serving(tmp_path_factory.mktemp("service"), timeout_s=2.0, preview_interval_s=0.2) as server:
        yield server


def connected_scene() -> ModuleType:
    """An empty scene and an add-on connected to the service the preferences name."""
    support.fresh_scene()
    bpy, timers, _ = support.modules()
    support.pump(lambda: timers.runtime().server.connected, 30, "the connection to the service")
    return bpy


@pytest.fixture
def bpy(service: Service) -> ModuleType:
    return connected_scene()


def primitives(bpy: ModuleType) -> list:
    bpy.ops.mesh.primitive_cylinder_add(vertices=12, radius=0.15, depth=0.8, location=(1.0, 2.0, 0.4))
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, radius=0.45, location=(1.0, 2.0, 0.9))
    bpy.ops.mesh.primitive_cube_add(size=0.3, location=(1.4, 2.0, 0.15))
    objects = list(bpy.context.scene.objects)
    for obj in objects:
        obj.select_set(True)
    return objects


def configure(bpy: ModuleType, prompt: str, mode: str, overrides: dict) -> None:
    settings = bpy.context.scene.latentforge
    settings.prompt, settings.mode, settings.quality = prompt, mode, "draft"
    settings.extra_json = json.dumps(overrides)


def scene_job(bpy: ModuleType) -> object:
    _, timers, _ = support.modules()
    return timers.runtime().jobs.get(bpy.context.scene.session_uid)


def run_to_end(bpy: ModuleType, service: Service, timeout_s: float = JOB_TIMEOUT_S) -> tuple[object, list]:
    """Pump until this scene's job ends; returns the job and the (state, stage, step, preview images) seen
    on the way."""
    job, seen = scene_job(bpy), []

    def look() -> None:
        previews = list(support.modules()[1].runtime().previews)  # icon previews, never datablocks:
        assert not [i for i in bpy.data.images if i.name.startswith("LatentForge Preview")]  # no undo step holds one
        seen.append((job.state, job.stage, job.step, previews))

    try:
        support.pump(lambda: not job.active, timeout_s, "the job to end", every=look)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nservice log:\n{service.tail()}") from None
    return job, seen


def render_not_blank(bpy: ModuleType, obj: object, path: Path) -> np.ndarray:
    """Render `obj` with Cycles on the CPU (tiny, few samples) to `path`; return its RGBA pixels."""
    scene = bpy.context.scene
    corners = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    center, size = (corners.min(0) + corners.max(0)) / 2, float(np.ptp(corners, axis=0).max())
    bpy.ops.object.camera_add(location=tuple(center + np.array([0.0, -2.5, 1.2]) * size))
    camera = bpy.context.object
    constraint = camera.constraints.new("TRACK_TO")
    constraint.target, constraint.track_axis, constraint.up_axis = obj, "TRACK_NEGATIVE_Z", "UP_Y"
    scene.camera = camera
    bpy.ops.object.light_add(type="SUN", location=tuple(center + size * 3))
    bpy.context.object.data.energy = 4.0
    support.render_still(scene, path, 96, 8)
    image = bpy.data.images.load(str(path))
    pixels = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(image.size[1], image.size[0], 4)


def test_generate_from_three_primitives(bpy: ModuleType, service: Service, tmp_path: Path) -> None:
    sketch = primitives(bpy)
    sketch_names = {o.name for o in sketch}
    lo = np.min([np.array(o.matrix_world @ v.co) for o in sketch for v in o.data.vertices], axis=0)
    hi = np.max([np.array(o.matrix_world @ v.co) for o in sketch for v in o.data.vertices], axis=0)
    configure(bpy, "a red toadstool", "GENERATE", TINY_GENERATE)
    bpy.ops.ed.undo_push(message="sketch")  # what the UI does after each edit
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    with pytest.raises(RuntimeError, match="A job is running in this scene"):
        bpy.ops.latentforge.generate()  # one job per scene
    job, seen = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    assert any(state == "running" and step > 0 for state, _, step, _ in seen), seen[-5:]
    assert any(previews for *_, previews in seen), "no preview showed while the job ran"
    assert bpy.context.scene.latentforge.job_id == job.job
    result = bpy.data.objects["Red toadstool"]
    np.testing.assert_allclose(result.location, (lo + hi) / 2, atol=1e-4)  # where the sketch was
    assert len(result.data.polygons) > 50 and "LatentForge" in result.data.uv_layers
    image = next(n for n in result.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE").image
    assert image.packed_file is not None and tuple(image.size) == (64, 64)
    hidden = bpy.data.collections["Red toadstool sketch"]
    assert {o.name for o in hidden.objects} == sketch_names and hidden.hide_viewport
    assert {p.name for p in Path(job.result_dir).iterdir()} == {"texture.png", "asset.glb"}
    assert [i.name for i in bpy.data.images] == [image.name] and job.preview is None  # the preview is gone
    assert result["latentforge_prompt"] == "a red toadstool" and result["latentforge_job"] == job.job


    bpy.ops.ed.undo()  # one step takes the result away and brings the sketch back
    assert "Red toadstool" not in bpy.data.objects and "Red toadstool sketch" not in bpy.data.collections
    assert {o.name for o in bpy.context.scene.objects} == sketch_names
    assert all(not o.hide_get() for o in bpy.context.scene.objects)
    bpy.ops.ed.redo()

    path = tmp_path / "generate-result.png"
    pixels = render_not_blank(bpy, bpy.data.objects["Red toadstool"], path)
    print(f"Cycles render of the generated result: {path}")
    lit = (pixels[..., :3].max(-1) > 0.05).mean()
    assert 0.02 < lit < 0.98 and pixels[..., :3].std() > 0.02, f"blank render: {lit:.3f} of pixels lit"


@pytest.mark.parametrize("has_uvs", [True, False], ids=["own-uvs", "no-uvs"])
def test_paint_keeps_the_mesh_and_adds_a_material(bpy: ModuleType, service: Service, has_uvs: bool) -> None:
    bpy.ops.mesh.primitive_uv_sphere_add(segments=12, ring_count=6, radius=0.5, location=(0.0, 0.0, 0.5))
    sphere = bpy.context.object
    if not has_uvs:  # the service unwraps it: vertices split on seams come back, faces in the same order
        sphere.data.uv_layers.remove(sphere.data.uv_layers[0])
    own_uvs = [layer.name for layer in sphere.data.uv_layers]
    before, loops_before = support.mesh_arrays(sphere)
    configure(bpy, "a mossy stone", "PAINT", TINY_PAINT)
    assert bpy.ops.latentforge.paint() == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    after, loops_after = support.mesh_arrays(sphere)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(loops_before, loops_after)
    assert list(bpy.context.scene.objects) == [sphere]  # the same object, nothing new
    # its own UV map when the service kept it, else a new one the texture is read through
    assert [layer.name for layer in sphere.data.uv_layers] == (own_uvs if has_uvs else ["LatentForge"])
    assert [m.name if m else None for m in sphere.data.materials] == [None, "Mossy stone"]  # a new slot
    assert {p.material_index for p in sphere.data.polygons} == {1}
    material = sphere.data.materials[1]
    uv_node = next(n for n in material.node_tree.nodes if n.type == "UVMAP")
    assert uv_node.uv_map == sphere.data.uv_layers.active.name
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE").image
    assert image.packed_file is not None


def test_paint_in_edit_mode_paints_only_the_selected_faces(bpy: ModuleType, service: Service) -> None:
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.object
    mesh = cube.data
    top = [p.index for p in mesh.polygons if p.normal.z > 0.9]
    for p in mesh.polygons:
        p.select = p.index in top
    for v in mesh.vertices:
        v.select = any(v.index in mesh.polygons[i].vertices for i in top)
    for e in mesh.edges:
        e.select = all(mesh.vertices[k].select for k in e.vertices)
    bpy.context.tool_settings.mesh_select_mode = (False, False, True)
    bpy.ops.object.mode_set(mode="EDIT")
    panel = support.submodule("panel")
    assert panel.paint_scope(bpy.context) == "Paints 1 of 6 faces (the Edit Mode selection)"
    configure(bpy, "a painted lid", "PAINT", TINY_PAINT)
    assert bpy.ops.latentforge.paint() == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    assert cube.mode == "EDIT"  # the result was written without leaving the user's mode
    bpy.ops.object.mode_set(mode="OBJECT")
    assert [m.name if m else None for m in mesh.materials] == [None, "Painted lid"]  # on a new slot
    assert [p.material_index for p in mesh.polygons] == [int(p.index in top) for p in mesh.polygons]
    material = mesh.materials[1]
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE").image
    layer = mesh.uv_layers[next(n for n in material.node_tree.nodes if n.type == "UVMAP").uv_map]
    w, h = image.size
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = (pixels.reshape(h, w, 4)[..., :3] * 255).round()  # row 0 is v = 0 in Blender
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    layer.uv.foreach_get("vector", uv)
    uv = uv.reshape(-1, 2)
    for p in mesh.polygons:
        centre = uv[list(p.loop_indices)].mean(0)
        texel = pixels[min(int(centre[1] * h), h - 1), min(int(centre[0] * w), w - 1)]
        if p.index in top:
            assert np.abs(texel - 231).max() > 8, texel  # painted
        else:  # around it, the new image holds how the faces kept look: Blender's grey (linear 0.8), as shown
            np.testing.assert_array_equal(texel, [231, 231, 231])


def test_lists_come_from_the_welcome_and_a_draft_paint_runs_the_draft_schedule(bpy: ModuleType,
                                                                               service: Service) -> None:
    from backend.service.client import Client

    with Client(service.endpoint, timeout_s=10.0) as client:
        offered = client.hello()["choices"]
    choices = support.submodule("choices")
    assert choices.listed("methods") == offered["methods"] and choices.listed("presets") == offered["presets"]
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    settings = bpy.context.scene.latentforge
    # the preset alone sets the steps and the texture: no Iterations, Texture "From Quality"
    settings.prompt, settings.mode, settings.quality = "a mossy stone", "PAINT", "draft"
    settings.iterations, settings.texture_size = 0, "0"
    settings.extra_json = json.dumps({"resolution": 16, "supersample": 1, "loop": {"preview_every_s": 0.2}})
    assert bpy.ops.latentforge.paint() == {"FINISHED"}
    job = scene_job(bpy)
    support.pump(lambda: job.stage == "paint" and job.total > 0, JOB_TIMEOUT_S, "the paint stage to start")
    assert job.total == 1500  # the draft paint schedule's steps (standard: 5000)
    assert bpy.ops.latentforge.cancel() == {"FINISHED"}
    job, _ = run_to_end(bpy, service, 60)
    assert job.state == "cancelled", (job.state, job.message)


def test_fetch_a_job_finished_elsewhere_by_its_id(bpy: ModuleType, service: Service) -> None:
    from backend.service.client import Client

    with Client(service.endpoint, timeout_s=10.0) as client:  # as if Blender had been closed meanwhile
        job_id = client.submit("a toadstool", "generate", overrides=TINY_GENERATE)
        client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
    bpy.context.scene.latentforge.fetch_job_id = job_id
    assert bpy.ops.latentforge.fetch() == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    assert [o.name for o in bpy.context.scene.objects] == ["Toadstool"]


def test_cancel_mid_job_leaves_the_sketch_as_it_was(bpy: ModuleType, service: Service) -> None:
    sketch = primitives(bpy)
    configure(bpy, "a toadstool", "GENERATE", with_iters(TINY_GENERATE, 100_000))
    bpy.ops.latentforge.generate()
    job = scene_job(bpy)
    support.pump(lambda: job.state == "running" and job.step > 0, JOB_TIMEOUT_S, "the job to run")
    assert bpy.ops.latentforge.cancel() == {"FINISHED"}
    job, _ = run_to_end(bpy, service, 60)
    assert job.state == "cancelled", (job.state, job.message)
    assert set(bpy.context.scene.objects) == set(sketch)
    assert all(not o.hide_get() and o.users_collection[0] == bpy.context.scene.collection for o in sketch)
    with pytest.raises(RuntimeError, match="No job is running"):
        bpy.ops.latentforge.cancel()


def test_service_killed_mid_job_and_restarted(bpy: ModuleType, service: Service) -> None:
    _, timers, prefs = support.modules()
    rt = timers.runtime()
    primitives(bpy)
    configure(bpy, "a toadstool", "GENERATE", with_iters(TINY_GENERATE, 60))
    bpy.ops.latentforge.generate()
    job = scene_job(bpy)
    support.pump(lambda: job.state == "running" and job.step > 0, JOB_TIMEOUT_S, "the job to run")
    killed = time.monotonic()
    service.kill()  # SIGKILL to the service and its worker: a crash, not a shutdown
    support.pump(lambda: not rt.server.connected, 30, "the add-on to notice the lost service")
    noticed = time.monotonic() - killed
    print(f"the panel noticed the dead server after {noticed:.2f} s (Timeout {prefs.get().timeout_s:g} s)")
    assert noticed < prefs.get().timeout_s + 0.5  # within the heartbeat window, not a request's timeout after it
    assert job.active and rt.server.message  # the job is not given up, the panel says why
    with pytest.raises(RuntimeError, match="No server"):
        bpy.ops.latentforge.generate()
    service.start()  # same address and job folder: the service requeues the job
    support.pump(lambda: rt.server.connected, 60, "the reconnection")
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    assert "Toadstool" in bpy.data.objects


def test_a_service_error_is_shown_verbatim(bpy: ModuleType, service: Service) -> None:
    configure(bpy, "a toadstool", "TEXT", with_iters(TINY_GENERATE, 0))  # refused: iters must be ≥ 1
    bpy.ops.latentforge.generate()
    job, _ = run_to_end(bpy, service, 30)
    assert job.state == "failed" and "iters must be at least 1" in job.message
    assert list(bpy.context.scene.objects) == []


@pytest.mark.parametrize(("select", "mode", "message"), [
    ((), "GENERATE", "Nothing is selected"),
    (("camera",), "GENERATE", "is a camera, not a mesh"),
    (("light", "mesh"), "GENERATE", "is a light, not a mesh"),
    ((), "PAINT", "Select one mesh object"),
    (("mesh", "mesh"), "PAINT", "2 objects are selected"),
    (("empty",), "PAINT", "is an empty, not a mesh"),
])
def test_a_bad_selection_is_refused_with_a_reason(bpy: ModuleType, select: tuple, mode: str, message: str) -> None:
    for kind in select:
        if kind == "mesh":
            bpy.ops.mesh.primitive_cube_add()
        else:
            getattr(bpy.ops.object, f"{kind}_add")()
    for obj in bpy.context.scene.objects:
        obj.select_set(True)
    objects = set(bpy.context.scene.objects)
    configure(bpy, "a toadstool", mode, TINY_GENERATE)
    operator = bpy.ops.latentforge.paint if mode == "PAINT" else bpy.ops.latentforge.generate
    with pytest.raises(RuntimeError, match=message):
        operator()
    assert set(bpy.context.scene.objects) == objects and scene_job(bpy) is None


def test_unreachable_offline_and_malformed_addresses(bpy: ModuleType, service: Service) -> None:
    _, timers, prefs = support.modules()
    rt, p = timers.runtime(), prefs.get()
    bpy.ops.mesh.primitive_cube_add()
    configure(bpy, "a toadstool", "GENERATE", TINY_GENERATE)
    try:
        p.server_address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
        support.pump(lambda: "cannot reach" in rt.server.message, 30, "the unreachable server to show")
        with pytest.raises(RuntimeError, match="No server: cannot reach the server"):
            bpy.ops.latentforge.generate()
        p.server_address = "tcp://203.0.113.7:5555"  # another computer, and bpy runs with online access off
        timers.drain()
        assert not bpy.app.online_access and "Blender is set to work offline" in rt.server.message
        p.server_address = "127.0.0.1:5555"
        assert "has no scheme" in rt.server.message
    finally:
        p.server_address = service.endpoint
    support.pump(lambda: rt.server.connected, 30, "the reconnection")
    assert scene_job(bpy) is None


def test_the_addon_starts_and_stops_a_local_server(bpy: ModuleType, service: Service, tmp_path: Path) -> None:
    _, timers, prefs = support.modules()
    rt, p = timers.runtime(), prefs.get()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="Set the backend's Python"):
        bpy.ops.latentforge.start_server()
    try:
        p.server_address = endpoint
        p.backend_python = sys.executable
        p.backend_args = f"--model target:{TARGET} --device cpu --workers 0 --jobs {tmp_path / 'jobs'}"
        assert bpy.ops.latentforge.start_server() == {"FINISHED"}
        process = rt.backend.process
        support.pump(lambda: rt.server.connected, 60, "the add-on's own server")
        assert rt.server.info.get("models") == [f"target:{TARGET}"]
        assert bpy.ops.latentforge.stop_server() == {"FINISHED"}
        assert process.poll() is not None and not rt.backend.running
        support.pump(lambda: not rt.server.connected, 30, "the stopped server to show")
    finally:
        rt.backend.stop()
        p.backend_python = p.backend_args = ""
        p.server_address = service.endpoint


def test_a_worker_joining_shows_in_the_panel_within_2_s(bpy: ModuleType, service: Service) -> None:
    from backend.service.client import Client

    _, timers, prefs = support.modules()
    rt, p = timers.runtime(), prefs.get()
    p.timeout_s = 60.0  # the add-on's own heartbeat is then 30 s apart: only the service's push is this quick
    try:
        support.pump(lambda: rt.server.connected, 30, "the reconnection")
        workers = rt.server.info["workers"]
        assert workers >= 1
        with Client(service.endpoint, timeout_s=10.0) as client:
            # the worker dies without a word; the service notices, then starts a new one, which joins once loaded
            os.kill(service.worker_pids()[0], signal.SIGKILL)
            left = panel_lag_s(client, rt, workers - 1)
            joined = panel_lag_s(client, rt, workers)
            print(f"the panel showed the worker leaving {left:.2f} s and joining {joined:.2f} s after the service")
            assert joined < 2.0 and left < 2.0
    finally:
        p.timeout_s = 2.0


def panel_lag_s(client: object, rt: object, workers: int, timeout_s: float = 300.0) -> float:
    """Seconds from the last moment the service still counted other than `workers` workers (an upper bound
    on when the change happened) to the panel's status line showing `workers`, with no user action."""
    _, timers, _ = support.modules()
    deadline = time.monotonic() + timeout_s
    changed_after = time.monotonic()
    while client.heartbeat()["workers"] != workers:
        changed_after = time.monotonic()
        timers.drain()
        assert time.monotonic() < deadline, f"the service never counted {workers} workers"
        time.sleep(0.05)
    support.pump(lambda: f"Workers: {workers} " in " ".join(rt.server.details()), 10, f"the panel to show {workers}")
    return time.monotonic() - changed_after


LONG_PROMPT = ("a weathered bronze statue of a monkey holding a lantern, green patina in the folds, moss on the "
               "plinth, chipped stone steps, soft morning light, photographed for a museum catalogue, "
               "highly detailed 3D")


def test_an_empty_field_offers_a_reexport_that_trains_nothing_again(bpy: ModuleType, service: Service,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, timers, _ = support.modules()
    assert len(LONG_PROMPT) == 200
    primitives(bpy)
    empty = {**TINY_GENERATE, "export": {**TINY_GENERATE["export"], "density_threshold": 1e6}}
    configure(bpy, LONG_PROMPT, "GENERATE", empty)
    bpy.ops.latentforge.generate()
    job, _ = run_to_end(bpy, service)
    assert job.state == "failed" and job.code == "no_surface", job.message
    assert "peak density is" in job.message and "threshold 1e+06" in job.message  # what was measured
    threshold = job.reexport_threshold
    assert threshold is not None and f"press Re-export at {threshold:g}" in job.message
    assert job.preview is None and not timers.runtime().previews  # gone on failure too

    stages: list[str] = []
    progress = timers.HANDLERS["progress"]
    monkeypatch.setitem(timers.HANDLERS, "progress", lambda rt, event: (stages.append(event["stage"]),
                                                                        progress(rt, event)))
    assert bpy.ops.latentforge.reexport() == {"FINISHED"}  # the one click
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    # straight to the export (its sub-steps are stages "export: NAME"): no optimisation step
    assert stages and all(stage.startswith("export") for stage in stages), stages
    result = next(o for o in bpy.data.objects if o.get("latentforge_prompt") == LONG_PROMPT)
    results = support.submodule("results")
    support.assert_whole_words(result.name, LONG_PROMPT, 63 - results.LONGEST_SUFFIX, results.DANGLING)
    assert len(result.data.polygons) > 0 and result["latentforge_job"] == job.job
    assert [i.name for i in bpy.data.images] == [f"{result.name} texture"]


def image_empty(bpy: ModuleType, image: object | None, azimuth: float, elevation: float) -> object:
    """An Image Empty (Add › Image › Reference) whose image faces the direction `azimuth`, `elevation`."""
    import math

    empty = bpy.data.objects.new("Concept", None)
    empty.empty_display_type = "IMAGE"
    empty.data = image
    # the image faces its local +Z: tip it up from facing −Y (the front), then turn it about the up axis
    empty.rotation_euler = (math.radians(90.0 - elevation), 0.0, math.radians(azimuth))
    empty.location = (3.0, -4.0, 1.0)  # where it stands does not matter, only where it faces
    bpy.context.scene.collection.objects.link(empty)
    bpy.context.view_layer.update()  # its world matrix, as the depsgraph keeps it in the UI
    return empty


def concept_image(bpy: ModuleType, name: str = "Concept art", size: int = 48, alpha: float = 1.0) -> object:
    """A red disc on a transparent background (`alpha`: the disc's own alpha)."""
    image = bpy.data.images.new(name, size, size, alpha=True)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    pixels = np.zeros((size, size, 4), np.float32)
    pixels[np.hypot(x, y) < size * 0.3] = (0.8, 0.1, 0.1, alpha)
    image.pixels.foreach_set(pixels.ravel())
    return image


def test_an_image_empty_gives_a_generate_its_image_and_view(bpy: ModuleType, service: Service) -> None:
    from PIL import Image

    sketch = primitives(bpy)
    lo = np.min([np.array(o.matrix_world @ v.co) for o in sketch for v in o.data.vertices], axis=0)
    hi = np.max([np.array(o.matrix_world @ v.co) for o in sketch for v in o.data.vertices], axis=0)
    image = concept_image(bpy)
    empty = image_empty(bpy, image, 30.0, 15.0)
    empty.select_set(True)
    bpy.context.view_layer.objects.active = empty  # the empty's own front is no job's front
    configure(bpy, "a red toadstool", "GENERATE", TINY_GENERATE)
    found = support.submodule("reference").reference_of(bpy.context)
    assert (found.source, found.problem) == ('Image Empty "Concept"', None)
    panel = draw(bpy, support.submodule("panel").VIEW3D_PT_latentforge)
    assert ("label", 'Reference: Image Empty "Concept"') in panel  # the thumbnail is Blender's to make
    assert ("label", "Seen 30° right of the front, 15° above") in panel
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished", job.message
    folder = service.jobs / job.job
    spec = json.loads((folder / "spec.json").read_text())
    assert (spec["image_azimuth"], spec["image_elevation"]) == (30.0, 15.0)
    assert spec["overrides"]["front_yaw"] == 0.0  # the sketch's front, not the empty's
    sent = np.asarray(Image.open(folder / "inputs" / "image.blob"))
    pixels = np.empty(48 * 48 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    np.testing.assert_array_equal(sent, np.round(pixels.reshape(48, 48, 4)[::-1] * 255))  # row 0 at the top
    result = bpy.data.objects["Red toadstool"]
    np.testing.assert_allclose(result.location, (lo + hi) / 2, atol=1e-4)  # where the sketch was
    assert empty.name in bpy.context.scene.objects and not empty.hide_get()  # the empty is not part of the sketch
    assert {o.name for o in bpy.data.collections["Red toadstool sketch"].objects} == {o.name for o in sketch}


@pytest.mark.parametrize("case", ["empty without image", "two empties", "missing file", "not an image", "huge image",
                                  "empty mask"])
def test_a_reference_image_that_cannot_be_used_is_refused_with_a_reason(bpy: ModuleType, service: Service,
                                                                       tmp_path: Path, case: str) -> None:
    primitives(bpy)
    settings = bpy.context.scene.latentforge
    configure(bpy, "a red toadstool", "GENERATE", TINY_GENERATE)
    message = {"empty without image": 'The Image Empty "Concept" has no image', "two empties": "2 Image Empties",
               "missing file": "does not exist", "not an image": "Cannot read", "huge image": "over the limit of 4096",
               "empty mask": "mask is empty"}[case]
    if case in ("empty without image", "two empties"):
        image_empty(bpy, None if case == "empty without image" else concept_image(bpy), 0.0, 0.0).select_set(True)
        if case == "two empties":
            image_empty(bpy, concept_image(bpy, "Other"), 90.0, 0.0).select_set(True)
    elif case in ("missing file", "not an image"):
        (tmp_path / "notes.png").write_text("not an image")
        settings.image_source, settings.reference_file = "FILE", str(tmp_path / ("nowhere.png" if case ==
                                                                                "missing file" else "notes.png"))
    else:
        settings.image_source = "IMAGE"
        settings.reference_image = (bpy.data.images.new("Huge", 4097, 1) if case == "huge image"
                                    else concept_image(bpy, alpha=0.0))  # all transparent: nothing is the object
    objects = set(bpy.context.scene.objects)
    if case != "not an image":  # the panel says what is wrong (a file's contents are read only when sent)
        labels = " ".join(text for kind, text in draw(bpy, support.submodule("panel").VIEW3D_PT_latentforge)
                          if kind == "label")
        assert message.split(":")[0] in labels or case == "empty mask", labels
    if case == "empty mask":  # the service's check: refused at submit, the panel shows why
        assert bpy.ops.latentforge.generate() == {"FINISHED"}
        job, _ = run_to_end(bpy, service, 60)
        assert job.state == "failed" and message in job.message and job.job is None, job.message
    else:
        with pytest.raises(RuntimeError, match=message):
            bpy.ops.latentforge.generate()
        assert scene_job(bpy) is None
    assert set(bpy.context.scene.objects) == objects


def test_reference_images_travel_as_display_values_with_their_alpha() -> None:
    import io

    from PIL import Image

    bpy, _, _ = support.modules()
    reference = support.submodule("reference")
    linear = bpy.data.images.new("Linear", 4, 2, alpha=True, float_buffer=True)
    linear.pixels.foreach_set(np.tile(np.float32([0.2, 0.5, 1.0, 0.5]), 8))
    try:
        sent = np.asarray(Image.open(io.BytesIO(reference.image_png(reference.Reference("image", image=linear)))))
    finally:
        bpy.data.images.remove(linear)
    assert sent.shape == (2, 4, 4)
    np.testing.assert_array_equal(sent[0, 0], [124, 188, 255, 128])  # linear 0.2, 0.5 encoded as sRGB


def test_two_variants_show_two_previews_and_the_picked_one_lands_as_one_object(bpy: ModuleType,
                                                                               service: Service) -> None:
    from test_addon_scene import draw

    panel = support.submodule("panel")
    configure(bpy, "a toadstool", "TEXT", TINY_GENERATE)
    settings = bpy.context.scene.latentforge
    settings.seed, settings.variants, settings.draft_steps = 4, 2, 10
    bpy.ops.ed.undo_push(message="before")
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    job = scene_job(bpy)
    support.pump(lambda: job.group is not None and all(v.preview for v in job.group.variants), JOB_TIMEOUT_S,
                 "a preview of each variant")
    seeds = [v.seed for v in job.group.variants]
    previews = sorted(support.modules()[1].runtime().previews)  # icon previews, never datablocks
    assert seeds == [4, 5] and len(previews) == 2 and [p[-6:] for p in previews] == ["seed 4", "seed 5"]
    assert not [i for i in bpy.data.images if i.name.startswith("LatentForge Preview")]
    log = draw(bpy, panel.VIEW3D_PT_latentforge)  # the grid: each variant's preview and its seed's button
    assert [kind for kind, _ in log].count("preview") == 2
    assert {text for kind, text in log if kind == "operator property"} == {
        f"latentforge.pick_variant.job={v.job}" for v in job.group.variants}
    first, other = job.group.variants
    support.pump(lambda: first.state == "finished", JOB_TIMEOUT_S, "the first draft")
    assert bpy.context.scene.objects[:] == []  # a draft is never landed
    assert bpy.ops.latentforge.pick_variant(job=first.job) == {"FINISHED"}
    job, _ = run_to_end(bpy, service)
    assert job.state == "finished" and job.job == first.job, job.message
    [result] = bpy.context.scene.objects  # one object: the finished variant
    assert result["latentforge_job"] == first.job and len(result.data.polygons) > 50
    assert not support.modules()[1].runtime().previews
    support.pump(lambda: other.state in ("cancelled", "finished"), 30, "the other variant to end")
    bpy.ops.ed.undo()  # one step takes the result away
    assert list(bpy.context.scene.objects) == []
