"""Rebuild the toadstool example meshes: `python -m backend.examples.toadstool.make_toadstool`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from backend.colour import srgb_to_linear, to_bytes
from backend.mesh import to_file_frame

HERE = Path(__file__).parent
ORIGIN = np.array([0.6, -0.4, 0.0])  # z up: the toadstool stands on the ground plane, off the origin
RED, CREAM = (0.80, 0.10, 0.08), (0.93, 0.88, 0.75)  # as a viewer shows them (sRGB)


def _coloured(mesh: trimesh.Trimesh, rgb: tuple[float, float, float]) -> trimesh.Trimesh:
    """`mesh` coloured `rgb` as viewers show it: glTF's vertex colours are linear, so the file holds it linear."""
    rgba = np.append(to_bytes(srgb_to_linear(np.asarray(rgb))), 255)
    mesh.visual.vertex_colors = np.tile(rgba, (len(mesh.vertices), 1)).astype(np.uint8)
    return mesh


def _save(meshes: list[trimesh.Trimesh], path: Path) -> None:
    merged = trimesh.util.concatenate(meshes)
    merged.vertices = to_file_frame(np.asarray(merged.vertices) + ORIGIN)
    merged.export(path)


def main() -> None:
    stem = trimesh.creation.cylinder(radius=0.16, height=0.5, sections=32)
    stem.apply_translation([0, 0, 0.25])
    cap = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    cap.vertices[:, 2] = np.maximum(cap.vertices[:, 2], -0.15)  # a flattened underside
    cap.apply_scale([0.45, 0.45, 0.3])
    cap.apply_translation([0, 0, 0.55])
    _save([_coloured(stem, CREAM), _coloured(cap, RED)], HERE / "target.glb")
    # the blockout an artist would make: a cylinder and a squashed sphere
    sketch_stem = trimesh.creation.cylinder(radius=0.2, height=0.55, sections=12)
    sketch_stem.apply_translation([0, 0, 0.27])
    sketch_cap = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    sketch_cap.apply_scale([0.45, 0.45, 0.25])
    sketch_cap.apply_translation([0, 0, 0.6])
    _save([sketch_stem, sketch_cap], HERE / "sketch.glb")


if __name__ == "__main__":
    main()
