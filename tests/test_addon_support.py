"""The harness the add-on tests share (the other test_addon_* modules import it), and its own checks.

Blender runs as the `bpy` module, headless, with a throwaway user folder so that nothing touches the
user's real Blender configuration. In that folder the source tree is linked as the extension
`latentforge` of the "User Default" repository (how Blender's manual suggests developing an extension),
so the add-on is enabled through Blender's own add-on machinery, exactly as an installed copy would be.
Building and installing the real zip is tested separately (test_addon_build.py).

There is no event loop headless, so timers never fire on their own: `pump()` calls the add-on's timer
callback in a loop, as Blender's would.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXTENSION = "bl_ext.user_default.latentforge"
_addon: ModuleType | None = None


def addon() -> ModuleType:
    """The add-on's package, enabled in a bpy whose user folder is a temporary one (made once per process)."""
    global _addon
    if _addon is not None:
        return _addon
    if "bpy" in sys.modules and "LATENTFORGE_TEST_BLENDER_USER" not in os.environ:
        raise RuntimeError("bpy was imported before the add-on harness could give it a temporary user folder: "
                           "import bpy through tests/test_addon_support.py only")
    user = Path(os.environ.setdefault("LATENTFORGE_TEST_BLENDER_USER", tempfile.mkdtemp(prefix="lf-blender-")))
    link = user / "extensions" / "user_default" / "latentforge"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    os.environ["BLENDER_USER_RESOURCES"] = str(user)  # read once, when bpy is first imported

    import bpy

    assert Path(bpy.utils.resource_path("USER")) == user, "Blender ignored BLENDER_USER_RESOURCES"
    import addon_utils  # a Blender module: importable once bpy is

    bpy.context.preferences.use_preferences_save = False
    addon_utils.enable(EXTENSION, default_set=True, handle_error=_raise)
    _addon = sys.modules[EXTENSION]
    atexit.register(_teardown, user)
    return _addon


def _raise(exc: BaseException) -> None:
    raise exc


def _teardown(user: Path) -> None:
    import addon_utils

    addon_utils.disable(EXTENSION, default_set=True)  # stops the connection thread and any local server
    shutil.rmtree(user, ignore_errors=True)


def modules() -> tuple[ModuleType, ...]:
    """(bpy, the add-on's timers module, its preferences module) for brevity in tests."""
    pkg = addon()
    import bpy

    return bpy, sys.modules[f"{pkg.__name__}.addon.runtime"], sys.modules[f"{pkg.__name__}.addon.preferences"]


def submodule(name: str) -> ModuleType:
    return sys.modules[f"{addon().__name__}.addon.{name}"]


def fresh_scene() -> None:
    """An empty file (the add-on stays enabled) and no job state from earlier tests."""
    bpy, timers, _ = modules()
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    timers.runtime().jobs = submodule("jobs").Jobs()


def pump(until: Callable[[], bool], timeout_s: float, what: str, every: Callable[[], None] | None = None) -> None:
    """Run the add-on's timer callback until `until()` holds; fail with the add-on's state if it never does."""
    _, timers, _ = modules()
    deadline = time.monotonic() + timeout_s
    while True:
        timers.drain()
        if every is not None:
            every()
        if until():
            return
        if time.monotonic() > deadline:
            rt = timers.runtime()
            jobs = [(j.state, j.stage, j.step, j.total, j.message) for j in rt.jobs.all()]
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; server: {rt.server}; "
                                 f"jobs: {jobs}")
        time.sleep(0.05)


def mesh_arrays(obj: object) -> tuple[np.ndarray, np.ndarray]:
    """(vertex coordinates [V, 3], loop vertex indices) of a mesh object's own data."""
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    loops = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    return co.reshape(-1, 3), loops


def png_bytes(rgba: tuple[float, float, float, float], size: int = 8) -> bytes:
    """A PNG of one colour, written by Blender itself."""
    import bpy

    image = bpy.data.images.new("lf-test-png", size, size)
    image.pixels.foreach_set(np.tile(np.asarray(rgba, np.float32), size * size))
    path = Path(tempfile.mkdtemp(prefix="lf-png-")) / "colour.png"
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    bpy.data.images.remove(image)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


def assert_whole_words(name: str, prompt: str, budget: int, dangling: frozenset = frozenset()) -> None:
    """`name` is as many of the prompt's first words (article dropped) as fit in `budget` bytes, less
    `dangling` words ("a", "of") that the cut would have left at its end."""
    words = prompt.split()
    if words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    count = len(name.split())
    assert count < len(words) and name.lower() == " ".join(words[:count]).rstrip(",.;:-").lower(), name
    assert len(name.encode("utf-8")) <= budget, name
    rest = words[count:]
    while rest and rest[0].lower() in dangling:  # left out only because a dangling word cannot end a name
        rest = rest[1:]
    assert budget < len(" ".join(words[:len(words) - len(rest) + 1]).encode()), name


# -- the harness's own checks ---------------------------------------------------------------------------


def test_blender_uses_a_throwaway_user_folder() -> None:
    bpy, _, _ = modules()
    user = Path(bpy.utils.resource_path("USER"))
    assert user == Path(os.environ["LATENTFORGE_TEST_BLENDER_USER"])
    assert user != Path.home() / ".config" / "blender"


def test_addon_is_enabled_from_this_source_tree() -> None:
    bpy, timers, prefs = modules()
    assert EXTENSION in bpy.context.preferences.addons
    assert Path(addon().__file__).resolve() == REPO / "__init__.py"
    assert prefs.get().server_address == "tcp://127.0.0.1:5555"
    assert bpy.app.timers.is_registered(timers.drain)


def render_still(scene: object, path: Path, size: int, samples: int) -> None:
    """Render `scene`'s camera with Cycles on the CPU, undenoised, to the PNG `path` (size² pixels)."""
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", samples, False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
