"""What paint reads of a mesh before any work: the UVs it paints through and the texture it will make.

A mesh keeps its own UVs when they are usable (UDIM tiles are laid out as the cells of one atlas, see
`udim`), else xatlas unwraps it. A partial paint's texture copies the image its faces already show (see
`appearance`), at that image's size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from backend.errors import ConfigError
from backend.export.unwrap import unwrap
from backend.mesh import Mesh, validate_mesh
from backend.tasks.appearance import LATENT_FACTOR, MAX_SIDE, Appearance
from backend.tasks.face_selection import check_faces
from backend.tasks.paint_config import PaintConfig
from backend.tasks.udim import TileLayout, split_by_tile, tile_layout


def check_uvs(mesh: Mesh) -> TileLayout | None:
    """The UDIM tiles a mesh's UVs lie in (None for the [0, 1] square, or no UVs); `InputError` for UVs
    paint cannot use (left of or below tile 1001, past u = 10, a face across tiles)."""
    return tile_layout(mesh)


def has_own_uvs(mesh: Mesh) -> bool:
    """Whether a mesh has UVs paint keeps: present and not all degenerate."""
    if mesh.uvs is None:
        return False
    uv = mesh.uvs
    e1, e2 = uv[mesh.faces[:, 1]] - uv[mesh.faces[:, 0]], uv[mesh.faces[:, 2]] - uv[mesh.faces[:, 0]]
    return bool(np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum() > 1e-8)


@dataclass
class Surface:
    """A mesh as paint reads it: the UVs renders use (an atlas in [0, 1]) and the UVs the result keeps."""

    mapped: Mesh  # the input's vertices (split along seams and UDIM tile borders), faces in its order, atlas UVs
    vertex_map: np.ndarray  # [V] the input vertex each vertex of `mapped` copies
    uvs: np.ndarray  # [V, 2] the UVs the result carries: the mesh's own (UDIM tiles too) or the new atlas
    layout: TileLayout | None  # UDIM: where each tile sits in the atlas


def paint_surface(mesh: Mesh, texture_size: int, padding: int) -> Surface:
    """The mesh with usable UVs: its own when it has them (UDIM tiles laid out in one atlas), else an
    xatlas atlas of a `texture_size`² texture with `padding` texels between charts."""
    mesh = validate_mesh(mesh, "paint mesh")
    if has_own_uvs(mesh):
        layout = check_uvs(mesh)
        if layout is None:
            return Surface(mesh, np.arange(len(mesh.vertices)), mesh.uvs, None)
        mapped, vertex_map = split_by_tile(mesh, layout)
        return Surface(mapped, vertex_map, mesh.uvs[vertex_map], layout)
    mapped, vertex_map = unwrap(mesh, texture_size, padding=padding)
    return Surface(mapped, vertex_map, mapped.uvs, None)


@dataclass
class TexturePlan:
    """What a paint's texture will be, checked before any work: its size and the image it copies."""

    config: PaintConfig  # with `texture_size` the atlas's side (UDIM: the tiles' cells together)
    tile_size: int  # one tile's side (the whole texture's without UDIM)
    layout: TileLayout | None
    faces: np.ndarray | None  # the selected faces, checked
    appearance: Appearance | None  # how every face looks now (partial paint)
    reference: int | None  # the appearance's image that the texture copies


def plan_texture(config: PaintConfig, mesh: Mesh, faces: np.ndarray | None,
                 appearance: Appearance | None) -> TexturePlan:
    """The painted texture's plan; `InputError` or `ConfigError` for what cannot be painted. A partial
    paint copies the image its faces show through the paint UVs, at that image's size; `config.texture_size`
    is one UDIM tile's side."""
    mesh = validate_mesh(mesh, "paint mesh")
    own = has_own_uvs(mesh)
    layout = check_uvs(mesh) if own else None
    reference = None
    if faces is not None:
        faces = check_faces(faces, len(mesh.faces))
        appearance = appearance or Appearance.of_mesh(mesh)
        found = appearance.reference(mesh.uvs[mesh.faces], faces, layout) if own else None
        if found is not None:
            reference, side = found
            config = replace(config, texture_size=side)
    grid = layout.grid if layout is not None else 1
    if config.texture_size * grid > MAX_SIDE:
        raise ConfigError(f"{len(layout.tiles)} UDIM tiles of {config.texture_size}² texels are painted in one "
                          f"{config.texture_size * grid}² atlas, over the limit of {MAX_SIDE}²",
                          f"paint tiles of {MAX_SIDE // grid // LATENT_FACTOR * LATENT_FACTOR}² or less, "
                          "or fewer tiles")
    return TexturePlan(replace(config, texture_size=config.texture_size * grid), config.texture_size, layout, faces,
                       appearance, reference)
