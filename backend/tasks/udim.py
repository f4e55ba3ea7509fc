"""UDIM tiles: UVs beyond the [0, 1] square, one image per unit square (tile 1001 + ⌊u⌋ + 10·⌊v⌋).

Paint renders one square texture, so the tiles a mesh uses are laid out as the cells of a square atlas
(row by row from the top left, in tile order), painted there, and split back into one image per tile.
A cell's side is the tile's, a multiple of 8, so no latent texel straddles two tiles; only the bilinear
and mip-map lookups of a face right at its tile's edge read a texel or two of the neighbouring cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backend.errors import InputError
from backend.mesh import Mesh

FIRST_TILE = 1001
TILES_PER_ROW = 10  # UDIM's u range: tiles 1001-1010 are the first row
EPS = 1e-4  # UVs this far past a tile's edge still belong to it (float noise of an exporter)


def face_tiles(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] the UDIM tile of each face (1001 for the [0, 1] square), or `InputError` for UVs left of or
    below the first tile, right of the tenth column, or a face whose corners lie in different tiles."""
    corners = np.asarray(uvs, np.float64)[np.asarray(faces)]  # [F, 3, 2]
    if not len(corners):
        return np.zeros(0, np.int64)
    if corners.min() < -EPS:
        raise InputError(f"the paint mesh's UVs reach {corners.min():.3g}, left of or below the first UDIM tile",
                         "move the UVs into [0, 1] or into UDIM tiles 1001 and up (u in [0, 10), v ≥ 0)")
    cell = np.floor(corners.mean(1)).astype(np.int64)  # a face's tile is the one its centroid lies in
    if cell[:, 0].max() >= TILES_PER_ROW:
        raise InputError(f"the paint mesh's UVs reach u = {corners[..., 0].max():.3g}; UDIM tiles end at u = 10",
                         "move the UVs into tiles 1001-1010 and the rows above them")
    local = corners - cell[:, None, :]
    across = np.flatnonzero(((local < -EPS) | (local > 1 + EPS)).any(axis=(1, 2)))
    tiles = FIRST_TILE + cell[:, 0] + TILES_PER_ROW * cell[:, 1]
    if across.size:
        f = int(across[0])
        nudged = corners[f] + (corners[f].mean(0) - corners[f]) * 1e-3  # a corner on a border: the face's side
        spans = sorted({int(FIRST_TILE + c[0] + TILES_PER_ROW * c[1]) for c in np.floor(nudged).astype(int)})
        others = f" ({len(across):,} faces do)" if len(across) > 1 else ""
        raise InputError(f"face {f} of the paint mesh crosses UDIM tiles ({', '.join(map(str, spans))}){others}",
                         "split the UV islands at the tile borders, or pack the UVs into [0, 1]")
    return tiles


@dataclass(frozen=True)
class TileLayout:
    """Where each UDIM tile sits in the square atlas that is painted."""

    tiles: tuple[int, ...]  # sorted UDIM numbers

    @property
    def grid(self) -> int:
        """Cells per side."""
        return math.ceil(math.sqrt(len(self.tiles)))

    def cell(self, tile: int) -> tuple[int, int]:
        """(row from the top, column) of a tile's cell."""
        return divmod(self.tiles.index(tile), self.grid)

    def to_atlas(self, uvs: np.ndarray, tiles: np.ndarray) -> np.ndarray:
        """UDIM UVs [N, 2], each in its tile of `tiles` [N], → atlas UVs in [0, 1] (v up, like UVs)."""
        uvs = np.asarray(uvs, np.float64)
        index = np.searchsorted(np.asarray(self.tiles), tiles)
        rows, cols = np.divmod(index, self.grid)
        offset = np.stack([(tiles - FIRST_TILE) % TILES_PER_ROW, (tiles - FIRST_TILE) // TILES_PER_ROW], -1)
        local = np.clip(uvs - offset, 0.0, 1.0)
        g = self.grid
        return np.stack([(cols + local[:, 0]) / g, 1.0 - (rows + 1.0 - local[:, 1]) / g], -1).astype(np.float32)

    def cells(self, size: int) -> np.ndarray:
        """[size, size] the tile each texel of a size² atlas belongs to (0 in unused cells)."""
        side = size // self.grid
        grid = np.zeros((self.grid, self.grid), np.int64)
        for tile in self.tiles:
            grid[self.cell(tile)] = tile
        return np.repeat(np.repeat(grid, side, 0), side, 1)

    def split(self, atlas: np.ndarray) -> dict[int, np.ndarray]:
        """Each tile's image out of an atlas [G·S, G·S, ...]."""
        side = atlas.shape[0] // self.grid
        out = {}
        for tile in self.tiles:
            r, c = self.cell(tile)
            out[tile] = np.ascontiguousarray(atlas[r * side:(r + 1) * side, c * side:(c + 1) * side])
        return out

    def join(self, images: dict[int, np.ndarray]) -> np.ndarray:
        """The atlas of one image per tile (each [S, S, C], all one size); unused cells are black."""
        first = images[self.tiles[0]]
        side = first.shape[0]
        atlas = np.zeros((side * self.grid, side * self.grid, *first.shape[2:]), first.dtype)
        for tile in self.tiles:
            r, c = self.cell(tile)
            atlas[r * side:(r + 1) * side, c * side:(c + 1) * side] = images[tile]
        return atlas


def tile_layout(mesh: Mesh) -> TileLayout | None:
    """The layout of a mesh whose UVs leave tile 1001, else None (the plain [0, 1] case)."""
    if mesh.uvs is None:
        return None
    tiles = face_tiles(mesh.uvs, mesh.faces)
    used = tuple(int(t) for t in np.unique(tiles))
    return None if used == (FIRST_TILE,) else TileLayout(used)


def split_by_tile(mesh: Mesh, layout: TileLayout) -> tuple[Mesh, np.ndarray]:
    """`mesh` with atlas UVs: a vertex that corners in two tiles share (on a tile border) is split in
    two. Returns the mesh (faces in the same order) and the input vertex each of its vertices copies."""
    tiles = np.repeat(face_tiles(mesh.uvs, mesh.faces), 3)
    corners = mesh.faces.reshape(-1)
    keys, inverse = np.unique(np.stack([corners, tiles], -1), axis=0, return_inverse=True)
    vertex_map = keys[:, 0]
    uvs = layout.to_atlas(mesh.uvs[vertex_map], keys[:, 1])
    faces = inverse.reshape(-1, 3).astype(np.int64)
    return mesh.copy_with(vertices=mesh.vertices[vertex_map], faces=faces, uvs=uvs, texture=None,
                          vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[vertex_map]), \
        vertex_map


def refuse_in_files(mesh: Mesh) -> None:
    """A GLB holds one texture, so a command that writes one cannot paint UDIM tiles: say where to."""
    layout = tile_layout(mesh)
    if layout is not None:
        raise InputError(f"the mesh's UVs lie in UDIM tiles {', '.join(map(str, layout.tiles))}, and a GLB holds "
                         "one texture", "paint it in Blender with the LatentForge add-on (it paints each tile "
                         "of a tiled image), or pack the UVs into the [0, 1] square")
