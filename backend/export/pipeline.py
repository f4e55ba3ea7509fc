"""Field → textured GLB: the whole export, step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.errors import InputError
from backend.export.bake import bake_texture
from backend.export.config import ExportConfig
from backend.export.fields import Field
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.isosurface import extract_mesh
from backend.export.unwrap import chart_count, unwrap
from backend.mesh import Frame, Mesh


@dataclass
class ExportResult:
    mesh: Mesh  # in the input frame (z-up internal coordinates), with UVs and the texture
    texture: np.ndarray  # [S, S, 3] uint8
    glb_path: Path
    png_path: Path
    charts: int = 0  # UV charts of the atlas: fewer charts, fewer texture seams
    normal_map_path: Path | None = None  # the tangent-space normal map (PNG), when one was baked


def export_asset(density_fn: Field, color_fn: Field, frame: Frame, config: ExportConfig, out_path: Path,
                 device: torch.device | str = "cpu",
                 on_progress: Callable[[str], None] | None = None) -> ExportResult:
    """Mesh, unwrap and texture the fields, then write `out_path` (GLB) and its texture beside it (PNG).

    Both fields take [N, 3] unit-frame points: `density_fn` returns [N] densities and `color_fn` [N, 3]
    RGB in [0, 1]. Nothing is written unless every step succeeds.
    """
    config.validate()
    glb_path = Path(out_path)
    if glb_path.suffix.lower() != ".glb":
        raise InputError(f"the output file {glb_path.name!r} must end in .glb")
    png_path = glb_path.with_suffix(".png")
    report = on_progress or (lambda _stage: None)

    report("marching cubes")
    mesh = extract_mesh(density_fn, config, device)
    report("uv unwrap")
    mesh, _ = unwrap(mesh, config.texture_size)
    report("bake")
    texture = bake_texture(mesh, color_fn, config.texture_size, device)
    report("write")
    mesh = mesh.copy_with(vertices=frame.from_unit(mesh.vertices), texture=texture)
    write_atomically({glb_path: glb_bytes(mesh, texture), png_path: png_bytes(texture)})
    return ExportResult(mesh, texture, glb_path, png_path, chart_count(mesh))
