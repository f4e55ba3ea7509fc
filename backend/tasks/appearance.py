"""What a mesh looks like before it is painted, face by face, and that look baked into the painted atlas.

Each face uses a material slot; a slot shows an image read through its own per-corner UVs, a flat colour,
or per-corner colours (a colour attribute). The Blender add-on sends this for a partial paint; a mesh
file's texture or vertex colours make a one-slot appearance. The unselected faces are rendered with it
(the new paint blends into what surrounds it), and the painted texture starts as a copy of the image the
selected faces already read through the paint UVs (the *reference*), so every texel outside the selection
comes back byte for byte.

Colours here are display values (sRGB-encoded), as a texture's bytes are. The submit's linear colours
(base colours, colour attributes, float images) are encoded here, in `from_wire`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from backend.colour import linear_to_srgb, to_bytes
from backend.errors import InputError
from backend.mesh import Mesh
from backend.render.atlas import atlas_raster, fill_empty
from backend.render.rasterize import interpolate
from backend.tasks.udim import FIRST_TILE, TILES_PER_ROW, TileLayout

FLAT, CORNERS = -1, -2  # a slot's source when it is not an image: its flat colour, or the per-corner colours
DEFAULT_COLOR = float(linear_to_srgb(0.8))  # Blender's default surface grey (linear 0.8) as it shows
LATENT_FACTOR = 8  # texels per latent texel: a painted texture's side is a multiple of it
MIN_SIDE, MAX_SIDE = 64, 4096
IMAGE_PREFIX = "image."  # submit arrays image.<k>.<tile>: image k's UDIM tile (a plain image is tile 1001)


@dataclass
class Appearance:
    face_slots: np.ndarray  # [F] int64: each face's slot
    sources: np.ndarray  # [S] int64: image index ≥ 0, FLAT or CORNERS
    colors: np.ndarray  # [S, 3] float32 display values: the flat colour (and an image's missing tiles)
    images: list[dict[int, np.ndarray]]  # image k: UDIM tile → [H, W, 3] uint8 display values, row 0 = v 1
    image_uvs: np.ndarray | None = None  # [F, 3, 2] float32: the UVs each face's image is read through
    corner_colors: np.ndarray | None = None  # [F, 3, 3] float32 display values
    # a file's own texture: the painted texture replaces it on every face, so it must be usable as is
    strict: bool = False

    @staticmethod
    def of_mesh(mesh: Mesh) -> Appearance:
        """A mesh file's look: its texture through its UVs, else its vertex colours, else Blender's grey."""
        n = len(mesh.faces)
        one = np.zeros(n, np.int64)
        if mesh.texture is not None and mesh.uvs is not None:
            return Appearance(one, np.array([0]), np.full((1, 3), DEFAULT_COLOR, np.float32),
                              [{FIRST_TILE: np.ascontiguousarray(mesh.texture[..., :3], np.uint8)}],
                              image_uvs=mesh.uvs[mesh.faces], strict=True)
        if mesh.vertex_colors is not None:
            return Appearance(one, np.array([CORNERS]), np.full((1, 3), DEFAULT_COLOR, np.float32), [],
                              corner_colors=mesh.vertex_colors[mesh.faces])
        return Appearance(one, np.array([FLAT]), np.full((1, 3), DEFAULT_COLOR, np.float32), [])

    @staticmethod
    def from_wire(arrays: dict[str, np.ndarray]) -> Appearance | None:
        """A paint submit's appearance arrays (checked by the protocol), linear colours encoded; None
        when the submit has none."""
        if "face_slots" not in arrays:
            return None
        sources = np.asarray(arrays["slot_sources"], np.int64)
        images: list[dict[int, np.ndarray]] = [{} for _ in range(int(sources.max(initial=-1)) + 1)]
        for name, array in arrays.items():
            if name.startswith(IMAGE_PREFIX):
                k, tile = (int(part) for part in name[len(IMAGE_PREFIX):].split("."))
                images[k][tile] = wire_image(array)
        n = len(arrays["face_slots"])
        image_uvs, corners = arrays.get("image_uvs"), arrays.get("corner_colors")
        return Appearance(
            np.asarray(arrays["face_slots"], np.int64), sources, linear_to_srgb(arrays["slot_colors"]), images,
            None if image_uvs is None else np.asarray(image_uvs, np.float32).reshape(n, 3, 2),
            None if corners is None else linear_to_srgb(corners).reshape(n, 3, 3))

    def reads_through(self, corner_uvs: np.ndarray) -> np.ndarray:
        """[F] whether each face shows an image read through exactly these per-corner UVs [F, 3, 2]."""
        image = self.sources[self.face_slots] >= 0
        if self.image_uvs is None or not image.any():
            return np.zeros(len(self.face_slots), bool)
        same = np.abs(self.image_uvs - corner_uvs).max(axis=(1, 2)) <= 1e-6
        return image & same

    def reference(self, corner_uvs: np.ndarray, faces: np.ndarray, layout: TileLayout | None) -> tuple[int, int] | None:
        """(image, its side) that the painted texture copies: the image most of `faces` read through the
        paint UVs, when each tile the paint covers is a square of it whose side fits a painted texture.
        None when no such image exists (a strict appearance refuses one that does not fit)."""
        reads = self.reads_through(corner_uvs)
        chosen = Counter(int(self.sources[self.face_slots[f]]) for f in faces if reads[f]).most_common(1)
        if not chosen:
            return None
        k = chosen[0][0]
        tiles = layout.tiles if layout is not None else (FIRST_TILE,)
        shapes = {self.images[k][t].shape[:2] for t in tiles if t in self.images[k]}
        side = next(iter(shapes))[0] if len(shapes) == 1 else 0
        grid = layout.grid if layout is not None else 1
        fits = len(shapes) == 1 and next(iter(shapes)) == (side, side) and side % LATENT_FACTOR == 0 and \
            side >= MIN_SIDE and side * grid <= MAX_SIDE and all(t in self.images[k] for t in tiles)
        if fits:
            return k, side
        if self.strict:
            h, w = self.images[k][FIRST_TILE].shape[:2]
            raise InputError(f"the mesh's texture is {w}×{h}; partial paint needs a square texture whose side is "
                             f"a multiple of {LATENT_FACTOR} in [{MIN_SIDE}, {MAX_SIDE}]",
                             "resize the texture image first")
        return None

    def reference_atlas(self, k: int, layout: TileLayout | None) -> np.ndarray:
        """Image k as the painted atlas lays it out (its tiles in their cells)."""
        return self.images[k][FIRST_TILE] if layout is None else layout.join(self.images[k])

    def bake(self, atlas: Mesh, size: int) -> np.ndarray:
        """[size, size, 3] uint8: each face's look under its texels of `atlas` (the mesh with the paint's
        atlas UVs, faces in this appearance's order); gutters take their nearest covered texel's colour."""
        faces = np.asarray(atlas.faces)
        corner_uvs = torch.as_tensor(atlas.uvs[faces].reshape(-1, 2))
        corner_faces = torch.arange(3 * len(faces)).reshape(-1, 3)
        rast = atlas_raster(corner_uvs, corner_faces, size)
        ids = rast[0, ..., 3].long().numpy() - 1
        covered = ids >= 0
        face = ids[covered]
        slot = self.face_slots[face]
        source = self.sources[slot]
        colour = self.colors[slot].astype(np.float32)

        def corner_attribute(values: np.ndarray) -> np.ndarray:
            attr = torch.as_tensor(values.reshape(3 * len(faces), -1), dtype=torch.float32)
            return interpolate(attr, rast, corner_faces)[0].numpy()[covered]

        if self.corner_colors is not None and (source == CORNERS).any():
            colour = np.where((source == CORNERS)[:, None], corner_attribute(self.corner_colors), colour)
        if self.image_uvs is not None and (source >= 0).any():
            uv = corner_attribute(self.image_uvs)
            for k in np.unique(source[source >= 0]):
                at = source == k
                colour[at] = sample_image(self.images[int(k)], uv[at], self.colors[slot[at]])
        texture = np.zeros((size, size, 3), np.uint8)
        texture[covered] = to_bytes(colour)
        return fill_empty(texture, covered)


def wire_image(array: np.ndarray) -> np.ndarray:
    """A submitted image as display bytes: uint8 arrays are sRGB bytes already; float ones are linear."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    return to_bytes(linear_to_srgb(np.asarray(array, np.float32)))


def sample_image(tiles: dict[int, np.ndarray], uv: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """[N, 3] display values of an image at UVs [N, 2], bilinear. A plain image (tile 1001 alone) repeats
    across the UV plane; a tiled one is read tile by tile, and UVs in a tile it lacks take `fallback` [N, 3]."""
    out = np.array(fallback, np.float32, copy=True)
    if set(tiles) == {FIRST_TILE}:
        where, local, images = [np.ones(len(uv), bool)], [uv], [tiles[FIRST_TILE]]
        mode = "grid-wrap"
    else:
        cell = np.floor(uv).astype(np.int64)
        tile = FIRST_TILE + cell[:, 0] + TILES_PER_ROW * cell[:, 1]
        present = [t for t in tiles if (tile == t).any()]
        where = [tile == t for t in present]
        local = [uv[w] - cell[w] for w in where]
        images, mode = [tiles[t] for t in present], "nearest"
    for at, st, image in zip(where, local, images, strict=True):
        h, w = image.shape[:2]
        rows, cols = (1.0 - st[:, 1]) * h - 0.5, st[:, 0] * w - 0.5  # texel centres at half-integers
        out[at] = np.stack([map_coordinates(image[..., c].astype(np.float32), [rows, cols], order=1, mode=mode)
                            for c in range(3)], -1) / 255.0
    return out
