"""Game-ready levels of detail from a full-resolution surface: each at its face budget, UV-mapped, with a
normal map baked from the full surface so the detail its geometry lost still shades.

Triangle levels: LOD0 is the surface simplified to the budget and unwrapped; each next level is collapsed
from the one before keeping its UVs (`lods.keep_uv_lods`), so every level reads LOD0's colour texture and
only its normal map (its own geometry's tangent space) is baked again. Quad levels: Instant Meshes remeshes
the full surface at each level's budget, so each has its own atlas, colour texture and normal map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from backend.errors import InputError
from backend.export.config import ExportConfig, lod_budgets
from backend.export.normal_map import bake_from_surface
from backend.export.polygons import Polygons, after_split
from backend.export.progress import ExportProgress
from backend.export.unwrap import atlas, chart_count, polygon_atlas
from backend.fields import Field
from backend.isosurface import simplify
from backend.mesh import Mesh

SPLIT_ATTEMPTS = 3  # quad remeshes per level: UV seams across quad diagonals add faces to a budget


def lod_name(name: str, k: int) -> str:
    """Level k's name in files: `<name>_LOD<k>`."""
    return f"{name}_LOD{k}"


@dataclass
class Level:
    mesh: Mesh  # triangles with per-vertex UVs (vertices split along seams)
    normal_map: np.ndarray  # [S, S, 3] uint8, tangent space, baked from the full surface
    texture: int  # which of the export's colour textures it reads
    charts: int
    polygons: Polygons | None = None  # its faces as polygons (quads), over `mesh.vertices`; None: triangles

    @property
    def face_count(self) -> int:
        """Faces as a modelling tool counts them: polygons when it has them, else triangles."""
        return len(self.polygons.sizes) if self.polygons is not None else len(self.mesh.faces)


def build_levels(full: trimesh.Trimesh, color_fn: Field, config: ExportConfig, device: torch.device | str,
                 progress: ExportProgress) -> tuple[list[Level], list[np.ndarray]]:
    """The levels of detail of `full` under `config` and the colour textures they read."""
    budgets = lod_budgets(config.max_faces, config.lods, config.lod_ratio)
    if config.quad:
        return _quad_levels(full, color_fn, config, budgets, device, progress)
    progress.start("simplify")
    simple = simplify(full, budgets[0])
    progress.finish()
    progress.start("unwrap")
    unwrapped = atlas(_mesh(simple), config.texture_size, config.atlas_smoothing)
    progress.finish()
    meshes = [unwrapped.mesh]
    if len(budgets) > 1:
        from backend.export.lods import keep_uv_lods

        progress.start("levels of detail")
        # from LOD0's own face count, so a surface under the budget still gets strictly smaller levels
        below = lod_budgets(len(unwrapped.mesh.faces), len(budgets), config.lod_ratio)[1:]
        meshes += keep_uv_lods(unwrapped.mesh, below)
        _check_decreasing([len(m.faces) for m in meshes])
        progress.finish()
    progress.start("bake", len(meshes))
    levels, textures = [], []
    for k, mesh in enumerate(meshes):
        baked = bake_from_surface(mesh, full, color_fn if k == 0 else None, config.texture_size, device)
        textures += [] if baked.texture is None else [baked.texture]
        levels.append(Level(mesh, baked.normal_map, 0, unwrapped.charts if k == 0 else chart_count(mesh)))
        progress.advance()
    return levels, textures


def _quad_levels(full: trimesh.Trimesh, color_fn: Field, config: ExportConfig, budgets: list[int],
                 device: torch.device | str, progress: ExportProgress) -> tuple[list[Level], list[np.ndarray]]:
    from backend.export.quads import quad_remesh

    progress.start("remesh", len(budgets))  # each level: Instant Meshes, then its atlas
    shapes = []
    for budget in budgets:
        target = budget
        for _ in range(SPLIT_ATTEMPTS):
            vertices, polygons = quad_remesh(full, target)
            triangles, owner = polygons.triangles()
            unwrapped = polygon_atlas(vertices, triangles, owner, config.texture_size)
            split = after_split(polygons, triangles, unwrapped.mesh.faces)
            if len(split.sizes) <= budget:
                break
            target = int(target * budget / len(split.sizes) * 0.98)
        else:
            raise InputError(f"the quad mesh's UV seams kept it over the budget of {budget:,} faces",
                             "ask for more faces (--faces)")
        shapes.append((unwrapped, split))
        progress.advance()
    _check_decreasing([len(split.sizes) for _, split in shapes])
    progress.start("bake", len(shapes))
    levels, textures = [], []
    for k, (unwrapped, split) in enumerate(shapes):
        baked = bake_from_surface(unwrapped.mesh, full, color_fn, config.texture_size, device)
        textures.append(baked.texture)
        levels.append(Level(unwrapped.mesh, baked.normal_map, k, unwrapped.charts, split))
        progress.advance()
    return levels, textures


def _mesh(surface: trimesh.Trimesh) -> Mesh:
    return Mesh(np.asarray(surface.vertices, np.float32), np.asarray(surface.faces, np.int64))


def _check_decreasing(counts: list[int]) -> None:
    if any(b >= a for a, b in zip(counts, counts[1:], strict=False)):
        raise InputError(f"the levels of detail came out with {', '.join(f'{c:,}' for c in counts)} faces, "
                         "not fewer at each level", "ask for fewer levels of detail (--lods)")
