"""The example shipped with the package: a toadstool, its reference mesh and a primitive sketch of it.

`toadstool/target.glb` is a coloured reference for TargetGuidance, `toadstool/sketch.glb` a blockout of
primitives, `toadstool/example.toml` the prompt and schedules. `make_toadstool.py` rebuilds the meshes.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

EXAMPLE_DIR = Path(__file__).parent / "toadstool"


def example_target() -> Path:
    return EXAMPLE_DIR / "target.glb"


def example_sketch() -> Path:
    return EXAMPLE_DIR / "sketch.glb"


def example_config(kind: str) -> dict:
    """Settings for `kind`: "sd" (Stable Diffusion), "target" (TargetGuidance) or "cpu" (a short schedule)."""
    data = tomllib.loads((EXAMPLE_DIR / "example.toml").read_text(encoding="utf-8"))
    return data[kind]
