"""Field → textured GLB: the whole export, step by step, each step reported as progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh

from backend.errors import InputError
from backend.events import EventSink
from backend.export.bake import bake_texture
from backend.export.config import ExportConfig
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.progress import ExportProgress, estimate_substeps_s
from backend.export.unwrap import atlas
from backend.fields import Field, chunk_points
from backend.isosurface import extract_mesh
from backend.mesh import Frame, Mesh

if TYPE_CHECKING:
    from backend.export.levels import Level

COLOR_STENCIL_POINTS = 8  # field points one colour query may evaluate (a stencil): sizes the bake's chunks


@dataclass
class ExportResult:
    mesh: Mesh  # in the input frame (z-up internal coordinates), with UVs and the texture
    texture: np.ndarray  # [S, S, 3] uint8
    glb_path: Path
    png_path: Path
    charts: int = 0  # UV charts of the atlas: fewer charts, fewer texture seams
    normal_map_path: Path | None = None  # the tangent-space normal map (PNG), when one was baked
    # game-ready export: every level of detail (LOD0 is `mesh`), in the input frame, and the files they read
    levels: list[Level] = field(default_factory=list)
    textures: list[np.ndarray] = field(default_factory=list)  # [S, S, 3] uint8: the colour textures levels read
    obj_path: Path | None = None  # the OBJ with the levels' polygons, when they are quads


def export_asset(density_fn: Field, color_fn: Field, frame: Frame, config: ExportConfig, out_path: Path,
                 device: torch.device | str = "cpu", on_event: EventSink | None = None) -> ExportResult:
    """Mesh, unwrap and texture the fields, then write `out_path` (GLB) and its texture beside it (PNG).

    Both fields take [N, 3] unit-frame points: `density_fn` returns [N] densities and `color_fn` [N, 3]
    RGB in [0, 1] (given the surface's outward normals too when it takes a `normals` argument). Each
    sub-step is reported to `on_event` as a stage `export: NAME` that ends at its total. Nothing is
    written unless every step succeeds.
    """
    config.validate()
    glb_path = Path(out_path)
    if glb_path.suffix.lower() != ".glb":
        raise InputError(f"the output file {glb_path.name!r} must end in .glb")
    png_path = glb_path.with_suffix(".png")
    progress = ExportProgress(on_event, estimate_substeps_s(config, torch.device(device).type))

    config.validate()
    mesh = extract_mesh(density_fn, config.grid_resolution, config.density_threshold, config.bound,
                        config.max_faces, device, config.memory_gb, progress)
    normals = np.asarray(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals)
    progress.start("unwrap")
    unwrapped = atlas(mesh, config.texture_size, config.atlas_smoothing)
    progress.finish()
    mesh = unwrapped.mesh
    texture = bake_texture(mesh, color_fn, config.texture_size, device, normals=normals[unwrapped.vertex_map],
                           chunk=chunk_points(config.memory_gb, COLOR_STENCIL_POINTS), progress=progress)
    progress.start("write")
    mesh = mesh.copy_with(vertices=frame.from_unit(mesh.vertices), texture=texture)
    write_atomically({glb_path: glb_bytes(mesh, texture), png_path: png_bytes(texture)})
    progress.finish()
    return ExportResult(mesh, texture, glb_path, png_path, unwrapped.charts)
