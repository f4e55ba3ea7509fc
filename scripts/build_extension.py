"""Build the installable Blender extension zips (one per platform) and validate each.

Uses Blender's own extension tool, `blender_ext.py`, which ships inside Blender and inside the `bpy`
wheel, so no Blender install is needed:

    python scripts/fetch_wheels.py        # (run by this script) pyzmq wheels into wheels/
    python scripts/build_extension.py     # dist/latentforge-<version>-<platform>.zip

`--blender-ext PATH` points at another copy of the tool (e.g. from a Blender install).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_wheels import ROOT, fetch  # noqa: E402


def find_blender_ext() -> Path:
    """blender_ext.py inside the installed `bpy` wheel (found without importing bpy, which is slow)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bpy module is not installed: pip install bpy, or pass --blender-ext")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise RuntimeError(f"no blender_ext.py under {package_dir}: pass --blender-ext")
    return found[-1]


def expected_zips(manifest: Path, output_dir: Path) -> list[Path]:
    """The names `build --split-platforms` gives its zips: <id>-<version>-<platform, '-' as '_'>.zip."""
    with manifest.open("rb") as fh:
        data = tomllib.load(fh)
    return [output_dir / f"{data['id']}-{data['version']}-{platform.replace('-', '_')}.zip"
            for platform in data["platforms"]]


def blender_ext(tool: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(tool), *args], check=True)


def build(output_dir: Path, tool: Path | None = None, source_dir: Path = ROOT) -> list[Path]:
    """Fetch the wheels, build one zip per platform into `output_dir`, validate them; return the zips."""
    tool = tool or find_blender_ext()
    fetch(source_dir / "blender_manifest.toml")
    output_dir.mkdir(parents=True, exist_ok=True)
    blender_ext(tool, "build", "--split-platforms", "--source-dir", str(source_dir),
                "--output-dir", str(output_dir))
    zips = expected_zips(source_dir / "blender_manifest.toml", output_dir)
    for path in zips:
        blender_ext(tool, "validate", str(path))
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, help="path to blender_ext.py (default: the bpy wheel's)")
    args = parser.parse_args(argv)
    for path in build(args.output_dir, args.blender_ext):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
