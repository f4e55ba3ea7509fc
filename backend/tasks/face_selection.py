"""Partial paint: which texels the selected faces own, what the rest of the texture keeps, seam blending.

Every texel of the atlas belongs to the face whose covered texels are nearest to it (its own face when a
triangle covers it). Only the texels of the selected faces change, and the gutter texels within
`padding` texels of them that they own (so mip-map lookups at their edges read their own colour); every
other texel comes back byte for byte: gutters between other charts, other charts, other UDIM tiles.
What they come back as is the *base*: the image the selected faces read through the paint UVs (a
painted copy of it, for the add-on), else the mesh's look (`Appearance`) baked into the new atlas. The
look of the unselected faces (the *context*) is what renders show around the painted part, and inside
the selection the new paint ramps up over a few texels from it, so the new paint blends in across the seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from backend.errors import InputError
from backend.guidance.base import Guidance
from backend.mesh import Mesh
from backend.render.atlas import atlas_raster
from backend.tasks.appearance import LATENT_FACTOR, Appearance
from backend.tasks.udim import TileLayout, face_tiles


def load_faces(path: str | Path) -> np.ndarray:
    """Face indices from a `.npy` integer array or a text file of integers (spaces, commas or lines)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the face list {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            faces = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().replace(",", " ").split()
            faces = np.array([int(t) for t in text], dtype=np.int64)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read the face list {path.name!r}: {exc}",
                         "give a .npy integer array or a text file of face indices") from exc
    return faces


def check_faces(faces: np.ndarray, n_faces: int) -> np.ndarray:
    """The selected face indices, sorted and unique, or `InputError` saying what is wrong with them."""
    faces = np.asarray(faces)
    if faces.size == 0:
        raise InputError("the face list is empty", "select at least one face to paint")
    if not np.issubdtype(faces.dtype, np.integer):
        raise InputError(f"face indices must be integers, got {faces.dtype}")
    faces = faces.reshape(-1).astype(np.int64)
    bad = faces[(faces < 0) | (faces >= n_faces)]
    if bad.size:
        raise InputError(f"face index {int(bad[0])} is out of range: the mesh has {n_faces} faces (0 … {n_faces - 1})",
                         "list faces of this mesh")
    return np.unique(faces)


def padding_for(size: int) -> int:
    """Texels of gutter around the selected faces that are painted with them (and the seam's feather)."""
    return max(2, size // 256)


@dataclass
class Selection:
    painted: np.ndarray  # [S, S] bool: texels the selected faces own
    weight: np.ndarray  # [S, S] float in [0, 1]: share of the new paint in each texel (0 outside `painted`)
    base: np.ndarray  # [S, S, 3] uint8: what every texel outside `painted` comes back as
    context: np.ndarray  # [S, S, 3] uint8: how the unselected faces look (renders hold it; seams blend from it)

    def compose(self, painted: np.ndarray) -> np.ndarray:
        """The final texture: `painted` [S, S, 3] uint8 blended over the context in the selected texels,
        `base` elsewhere."""
        w = self.weight[..., None]
        blend = np.round(w * painted.astype(np.float32) + (1 - w) * self.context.astype(np.float32))
        return np.where(self.painted[..., None], blend.clip(0, 255).astype(np.uint8), self.base)

    def hold(self, scene, guidance: Guidance) -> None:  # noqa: ANN001 - a LatentTexture
        """Fix the scene's texels outside the selection at the context (latent: its encoding)."""
        device = scene.texture.device
        context = torch.as_tensor(self.context, device=device).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            latent = guidance.encode(context[None].to(guidance.device))[0].to(device)
        latent = F.interpolate(latent[None], size=scene.texture.shape[-2:], mode="area")[0]
        painted = torch.as_tensor(self.painted, device=device)
        # a latent texel is free when any texel under it is painted
        free = F.max_pool2d(painted[None, None].float(), LATENT_FACTOR)[0, 0] > 0
        rgb_kept = ~painted if scene.rgb_texture.numel() else None
        scene.keep(latent, ~free, context if rgb_kept is not None else None, rgb_kept)


def select_faces(mesh: Mesh, mapped: Mesh, faces: np.ndarray, size: int, appearance: Appearance | None = None,
                 layout: TileLayout | None = None, reference: int | None = None,
                 padding: int | None = None) -> Selection:
    """The `Selection` of `faces` (indices into `mesh.faces`, the same as `mapped.faces`), `mapped` being
    the mesh with the paint's atlas UVs. `reference` is the appearance's image the texture copies."""
    faces = check_faces(faces, len(mesh.faces))
    appearance = appearance or Appearance.of_mesh(mesh)
    raster = atlas_raster(torch.as_tensor(mapped.uvs), torch.as_tensor(mapped.faces), size)
    ids = raster[0, ..., 3].long().numpy()  # face + 1, 0 where empty
    covered = ids > 0
    distance, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    owner = ids[rows, cols] - 1  # every texel's nearest face
    padding = padding_for(size) if padding is None else padding
    painted = np.isin(owner, faces) & (distance <= padding)
    if layout is not None:  # a texel is painted only for a face of its own tile
        painted &= layout.cells(size) == face_tiles(mesh.uvs, mesh.faces)[owner]
    kept_covered = covered & ~painted
    if kept_covered.any():
        weight = np.clip(distance_transform_edt(~kept_covered) / padding, 0, 1)
    else:
        weight = np.ones((size, size))
    context = appearance.bake(mapped, size)
    base = context
    if reference is not None:
        base = appearance.reference_atlas(reference, layout)
        # faces that show the reference through these UVs look like it, gutters included
        own = appearance.reads_through(mesh.uvs[mesh.faces]) & (appearance.sources[appearance.face_slots] == reference)
        context = np.where(own[owner][..., None], base, context)
    return Selection(painted, np.where(painted, weight, 0.0), base, context)
