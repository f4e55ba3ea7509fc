"""Download the pyzmq wheels that blender_manifest.toml lists into wheels/.

The manifest's `wheels` list is the single source of truth: each file name carries the version,
Python tag, ABI tag and platform tag that `pip download` is asked for, so bumping pyzmq means
editing the manifest and running this again. Wheels already present are kept.

    python scripts/fetch_wheels.py [--manifest blender_manifest.toml]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WheelName:
    """The parts of a wheel file name that `pip download` needs to fetch exactly that file."""

    filename: str
    distribution: str
    version: str
    python_tag: str
    abi_tag: str
    platform_tag: str

    @classmethod
    def parse(cls, filename: str) -> WheelName:
        parts = filename.removesuffix(".whl").split("-")
        if len(parts) != 5 or not filename.endswith(".whl"):
            raise ValueError(f"not a wheel file name without a build tag: {filename}")
        return cls(filename, *parts)

    def python_version(self) -> str:
        """The interpreter to ask pip for: cp311 → 3.11; an abi3 wheel is asked for as Blender 5.1's 3.13."""
        if self.abi_tag == "abi3":
            return "3.13"
        digits = self.python_tag.removeprefix("cp")
        return f"{digits[0]}.{digits[1:]}"

    def pip_args(self, dest: Path) -> list[str]:
        platform_args = [arg for tag in self.platform_tag.split(".") for arg in ("--platform", tag)]
        return [
            sys.executable, "-m", "pip", "download", f"{self.distribution}=={self.version}",
            "--only-binary=:all:", "--no-deps", "--implementation", "cp",
            "--python-version", self.python_version(), *platform_args,
            "--dest", str(dest), "--quiet", "--disable-pip-version-check",
        ]


def manifest_wheels(manifest: Path) -> list[Path]:
    """The wheel paths the manifest lists, resolved against the manifest's folder."""
    with manifest.open("rb") as fh:
        data = tomllib.load(fh)
    return [(manifest.parent / entry).resolve() for entry in data.get("wheels", [])]


def fetch(manifest: Path) -> list[Path]:
    """Download every listed wheel that is missing; return all of them. Raises if pip fetched another file."""
    wheels = manifest_wheels(manifest)
    for path in wheels:
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        wheel = WheelName.parse(path.name)
        print(f"downloading {path.name}", file=sys.stderr)
        subprocess.run(wheel.pip_args(path.parent), check=True)
        if not path.is_file():
            raise RuntimeError(f"pip did not produce {path.name}: is that exact file on PyPI for these tags?")
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "blender_manifest.toml")
    args = parser.parse_args(argv)
    for path in fetch(args.manifest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
