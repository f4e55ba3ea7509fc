"""Partial paint: which texels the selected faces own, what the rest of the texture keeps, seam blending.

Every texel of the atlas belongs to the face whose covered texels are nearest to it (its own face when a
triangle covers it; gutters go to the nearest chart). Texels of selected faces are painted; all others
come back byte for byte as they were: the mesh's own texture when it has one and its own UVs are used,
else its vertex (material) colours baked into the new atlas, else a neutral grey. Inside the selection,
painted colours ramp up over a few texels from the nearest kept texel, so the new paint blends into
the old across the seam.
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
from backend.render.atlas import atlas_raster, fill_empty
from backend.render.rasterize import interpolate

DEFAULT_COLOR = 0.8  # Blender's default material grey, for meshes that bring no colour at all
LATENT_FACTOR = 8  # texels per latent texel


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


@dataclass
class Selection:
    painted: np.ndarray  # [S, S] bool: texels the selected faces own
    weight: np.ndarray  # [S, S] float in [0, 1]: share of the new paint in each texel (0 outside `painted`)
    base: np.ndarray  # [S, S, 3] uint8: the texture every other texel keeps

    @staticmethod
    def texture_size_for(mesh: Mesh, requested: int) -> int:
        """A textured mesh keeps its own texture's size (so kept texels stay byte-identical)."""
        if mesh.texture is None or mesh.uvs is None:
            return requested
        h, w = mesh.texture.shape[:2]
        if h != w or h % LATENT_FACTOR or not 64 <= h <= 4096:
            raise InputError(f"the mesh's texture is {w}×{h}; partial paint needs a square texture whose side is "
                             "a multiple of 8 in [64, 4096]", "resize the texture image first")
        return h

    def compose(self, painted: np.ndarray) -> np.ndarray:
        """The final texture: `painted` [S, S, 3] uint8 blended in over the selected texels, `base` elsewhere."""
        w = self.weight[..., None]
        blend = np.round(w * painted.astype(np.float32) + (1 - w) * self.base.astype(np.float32))
        return np.where(self.painted[..., None], blend.clip(0, 255).astype(np.uint8), self.base)

    def hold(self, scene, guidance: Guidance) -> None:  # noqa: ANN001 - a LatentTexture
        """Fix the scene's texels outside the selection at the base texture (latent: its encoding)."""
        device = scene.texture.device
        base = torch.as_tensor(self.base, device=device).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            latent = guidance.encode(base[None].to(guidance.device))[0].to(device)
        latent = F.interpolate(latent[None], size=scene.texture.shape[-2:], mode="area")[0]
        painted = torch.as_tensor(self.painted, device=device)
        # a latent texel is free when any texel under it is painted
        free = F.max_pool2d(painted[None, None].float(), LATENT_FACTOR)[0, 0] > 0
        rgb_kept = ~painted if scene.rgb_texture.numel() else None
        scene.keep(latent, ~free, base if rgb_kept is not None else None, rgb_kept)


def base_texture(mesh: Mesh, mapped: Mesh, vertex_map: np.ndarray, size: int) -> np.ndarray:
    """What the unselected texels keep: the mesh's texture if it is painted through its own UVs, else its
    vertex colours baked into `mapped`'s atlas, else `DEFAULT_COLOR`."""
    own_uvs = mesh.uvs is not None and np.array_equal(vertex_map, np.arange(len(mesh.vertices))) and \
        np.array_equal(mapped.uvs, mesh.uvs)
    if mesh.texture is not None and own_uvs:
        return np.ascontiguousarray(mesh.texture[..., :3], np.uint8)
    if mesh.vertex_colors is None:
        return np.full((size, size, 3), round(DEFAULT_COLOR * 255), np.uint8)
    rast = atlas_raster(torch.as_tensor(mapped.uvs), torch.as_tensor(mapped.faces), size)
    colors = torch.as_tensor(mesh.vertex_colors[vertex_map], dtype=torch.float32)
    baked = interpolate(colors, rast, torch.as_tensor(mapped.faces))[0]
    texture = (baked.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return fill_empty(texture, (rast[0, ..., 3] > 0).numpy())


def select_faces(mesh: Mesh, mapped: Mesh, vertex_map: np.ndarray, faces: np.ndarray, size: int,
                 feather: int | None = None) -> Selection:
    """The `Selection` of `faces` (indices into `mesh.faces`, the same as `mapped.faces`)."""
    faces = check_faces(faces, len(mesh.faces))
    raster = atlas_raster(torch.as_tensor(mapped.uvs), torch.as_tensor(mapped.faces), size)
    ids = raster[0, ..., 3].long().numpy()  # face + 1, 0 where empty
    covered = ids > 0
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    owner = ids[rows, cols] - 1  # every texel's nearest face
    painted = np.isin(owner, faces)
    kept_covered = covered & ~painted
    feather = max(2, size // 256) if feather is None else feather
    if kept_covered.any():
        weight = np.clip(distance_transform_edt(~kept_covered) / feather, 0, 1)
    else:
        weight = np.ones((size, size))
    return Selection(painted, np.where(painted, weight, 0.0), base_texture(mesh, mapped, vertex_map, size))
