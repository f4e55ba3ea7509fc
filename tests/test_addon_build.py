"""The extension as users get it: built and validated by Blender's own tool (from the bpy wheel), with the
pyzmq wheels for every platform, installed through Blender's extension machinery, and gone without a
trace when uninstalled. Installing runs in a fresh Blender process with its own throwaway user folder.

Needs PyPI the first time (scripts/fetch_wheels.py caches the wheels in wheels/).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
MANIFEST = tomllib.loads((REPO / "blender_manifest.toml").read_text(encoding="utf-8"))
CLIENT_FILES = ("backend/__init__.py", "backend/catalog.py", "backend/nesting.py", "backend/service/__init__.py",
                "backend/service/client.py",
                *(f"backend/service/protocol/{name}.py" for name in ("__init__", "base", "fields", "arrays", "codec")))
CLIENT_IMPORTS = {*sys.stdlib_module_names, "numpy", "zmq"}  # what Blender's Python has, plus the bundled pyzmq


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def blender_ext() -> ModuleType:
    """Blender's extension tool as a module, for its own wheel-platform logic."""
    spec = importlib.util.spec_from_file_location("blender_ext", load_script("build_extension").find_blender_ext())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """platform → built zip (fetching the wheels, building every platform, validating each zip)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_extension.py"), "--output-dir", str(out)],
                   check=True, cwd=REPO)
    built = {p: out / f"{MANIFEST['id']}-{MANIFEST['version']}-{p.replace('-', '_')}.zip"
             for p in MANIFEST["platforms"]}
    assert all(path.is_file() for path in built.values()), sorted(out.iterdir())
    return built


def test_manifest_bundles_pyzmq_for_each_platform_and_both_pythons() -> None:
    tool = blender_ext()
    wheel = load_script("fetch_wheels").WheelName
    assert set(MANIFEST["platforms"]) == {"linux-x64", "windows-x64", "macos-arm64", "macos-x64"}
    for platform in MANIFEST["platforms"]:
        tags = {(w.python_tag, w.abi_tag) for w in map(wheel.parse, (Path(p).name for p in MANIFEST["wheels"]))
                if tool.blender_platform_compatible_with_wheel_platform(platform, w.platform_tag)}
        assert ("cp311", "cp311") in tags, f"no wheel for Blender 4.2-5.0 (Python 3.11) on {platform}"
        assert any(abi == "abi3" and int(py[2:]) <= 313 for py, abi in tags), f"no abi3 wheel for 3.13 on {platform}"


def test_client_files_import_only_what_blender_has() -> None:
    for name in CLIENT_FILES:
        tree = ast.parse((REPO / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= CLIENT_IMPORTS, f"{name} imports {roots - CLIENT_IMPORTS}: the add-on ships this file"


def test_each_zip_holds_the_addon_the_client_and_its_platforms_wheels(zips: dict[str, Path]) -> None:
    tool = blender_ext()
    expected = {"blender_manifest.toml", "__init__.py", *CLIENT_FILES,
                *(p.relative_to(REPO).as_posix() for p in (REPO / "addon").glob("*.py"))}
    for platform, path in zips.items():
        names = set(zipfile.ZipFile(path).namelist())
        wheels = {n for n in names if n.startswith("wheels/")}
        assert names - wheels == expected, f"{path.name}: unexpected {names - wheels - expected}, " \
                                           f"missing {expected - names}"
        assert len(wheels) == 2 and all(
            tool.blender_platform_compatible_with_wheel_platform(platform, Path(w).stem.split("-")[-1])
            for w in wheels), wheels


INSTALL = r"""
import json, os, sys, threading, time
import bpy

out = {}
repo = next(r for r in bpy.context.preferences.extensions.repos if r.module == "user_default")
bpy.ops.extensions.package_install_files(filepath=sys.argv[-1], repo="user_default", enable_on_install=True)
pkg = "bl_ext.user_default.latentforge"
out["enabled"] = pkg in bpy.context.preferences.addons
out["types"] = sorted(t for t in dir(bpy.types) if "latentforge" in t.lower())
out["scene_property"] = hasattr(bpy.types.Scene, "latentforge")
out["operators"] = sorted(dir(bpy.ops.latentforge))
site = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", ".local", "lib",
                    f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
out["wheel_installed"] = os.path.isfile(os.path.join(site, "zmq", "__init__.py"))
timers = sys.modules[pkg + ".addon.runtime"]
timers.drain()  # the first tick starts the connection thread
out["threads_while_enabled"] = sorted(t.name for t in threading.enumerate())
bpy.ops.extensions.package_uninstall(repo_directory=repo.directory, pkg_id="latentforge")
out["enabled_after"] = pkg in bpy.context.preferences.addons
out["types_after"] = sorted(t for t in dir(bpy.types) if "latentforge" in t.lower())
out["scene_property_after"] = hasattr(bpy.types.Scene, "latentforge")
out["timer_after"] = bpy.app.timers.is_registered(timers.drain)
out["threads_after"] = sorted(t.name for t in threading.enumerate())
out["modules_after"] = sorted(m for m in sys.modules if m.startswith(pkg))
out["files_after"] = sorted(os.listdir(repo.directory))
out["wheel_after"] = os.path.exists(os.path.join(site, "zmq"))
print("RESULT " + json.dumps(out))
"""


def test_zip_installs_registers_and_uninstalls_without_a_trace(zips: dict[str, Path], tmp_path: Path) -> None:
    script = tmp_path / "install.py"
    script.write_text(INSTALL, encoding="utf-8")
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    run = subprocess.run([sys.executable, str(script), str(zips["linux-x64"])], env=env, capture_output=True,
                         text=True, timeout=120)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["enabled"] and out["scene_property"] and out["wheel_installed"]
    assert {"VIEW3D_PT_latentforge", "VIEW3D_PT_latentforge_advanced", "LATENTFORGE_OT_generate"} <= set(out["types"])
    assert {"generate", "paint", "cancel", "reconnect", "fetch", "open_results"} <= set(out["operators"])
    assert "latentforge-connection" in out["threads_while_enabled"]
    assert not out["enabled_after"] and not out["scene_property_after"] and not out["timer_after"]
    assert out["types_after"] == [] and out["modules_after"] == []
    assert out["threads_after"] == ["MainThread"]
    assert "latentforge" not in out["files_after"] and not out["wheel_after"]
