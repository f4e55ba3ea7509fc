"""Paint from a reference image: the image projected onto the texels its view sees.

Each texel of the atlas is a point on the mesh (its face and barycentrics). It takes the image's colour at
its projection in the reference view when three things hold there:

- it is the front-most surface: the mesh is rasterised from the view (at the image's size), and either its
  own face is what the pixel it lands in shows, or it is no farther than the nearest depth within a pixel
  of it plus one pixel's footprint for its slope and its face is turned the same way as the shown one; a
  texel behind any other surface (a hidden face, the far side, even at a silhouette) never takes the
  image's colour;
- its face turns towards the view (faces are double-sided, as renders show them): the weight fades from 1
  to 0 between 73° and 84° from the view, where one pixel spreads over many texels;
- the image's mask there is the object (the weight is the mask's value).

The result is a colour and a weight per texel: the target of the texels the view sees. Score distillation
paints the rest (`backend.tasks.paint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backend.cameras import Cameras
from backend.latent import resize
from backend.reference import ReferenceImage
from backend.render.atlas import atlas_raster, fill_empty
from backend.render.mesh_render import rasterizer_for
from backend.render.rasterize import interpolate

FACING = (0.1, 0.3)  # |cos| of the angle to the view: no weight below the first, full weight above the second


@dataclass
class Projection:
    """The reference image on the atlas: per texel a colour and how much of it is the image's."""

    colour: np.ndarray  # [S, S, 3] float32 display values in [0, 1]; texels without weight hold their nearest's
    weight: np.ndarray  # [S, S] float32 in [0, 1]; 0 where the view does not see the texel

    def restricted(self, texels: np.ndarray) -> Projection:
        """Only over `texels` [S, S] bool (a partial paint's own texels)."""
        return Projection(self.colour, np.where(texels, self.weight, 0.0).astype(np.float32))

    def blend(self, texture: np.ndarray) -> np.ndarray:
        """`texture` [S, S, 3] uint8 with the image's colours over it by weight."""
        w = self.weight[..., None]
        out = w * self.colour * 255.0 + (1 - w) * texture.astype(np.float32)
        return np.round(out).clip(0, 255).astype(np.uint8)


def project_image(vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, size: int,
                  image: ReferenceImage, cameras: Cameras) -> Projection:
    """The `Projection` of `image`, seen by `cameras` (one), onto the size² atlas of a mesh (`vertices` [V, 3]
    in the cameras' frame, `faces` [F, 3], atlas `uvs` [V, 2])."""
    device = vertices.device
    vertices, faces = vertices.float(), faces.long()
    # the texels: a surface point and its face each
    atlas = atlas_raster(uvs.to(device), faces, size)
    ids = atlas[0, ..., 3].long() - 1
    covered = ids >= 0
    points = interpolate(vertices, atlas, faces)[0][covered]  # [N, 3]
    face = ids[covered]
    corners = vertices[faces[face]]
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    # where they land in the view, and how far along its axis (clip w is the depth along the view axis)
    res = image.size
    mvp = cameras.mvp()[0]
    clip = torch.cat([points, torch.ones_like(points[:, :1])], -1) @ mvp.T
    depth = clip[:, 3]
    x = (clip[:, 0] / depth + 1) * 0.5 * res  # pixel coordinates, row 0 at the top, centres at +0.5
    y = (1 - clip[:, 1] / depth) * 0.5 * res
    # the view's depth buffer, each pixel's nearest surface within one pixel of it (conservative at edges)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1) @ mvp.T
    rast = rasterizer_for(device)(homo[None], faces, (res, res))
    buffer = interpolate(homo[:, 3:4], rast, faces)[0, ..., 0]
    buffer = torch.where(rast[0, ..., 3] > 0, buffer, torch.full_like(buffer, float("inf")))
    nearest = -F.max_pool2d(-buffer[None, None], 3, stride=1, padding=1)[0, 0]
    px, py = x.floor().long().clamp(0, res - 1), y.floor().long().clamp(0, res - 1)
    on_image = (x >= 0) & (x < res) & (y >= 0) & (y < res) & (depth > 0)
    towards = cameras.position[0] - points
    cos = (normal * towards).sum(-1).abs() / towards.norm(dim=-1).clamp(min=1e-12)
    footprint = 2 * depth * torch.tan(cameras.fov[0] / 2) / res  # one pixel's width at the texel's depth
    slope = torch.sqrt(1 - cos**2) / cos.clamp(min=FACING[0])
    # the face each pixel shows, and which side of each face the camera is on (faces are double-sided)
    shown = (rast[0, ..., 3].long() - 1)[py, px]
    centres = vertices[faces].mean(1)
    face_side = ((torch.linalg.cross(*(vertices[faces[:, k]] - vertices[faces[:, 0]] for k in (1, 2)))
                  * (cameras.position[0] - centres)).sum(-1) > 0)
    side = (normal * towards).sum(-1) > 0
    # near the pixel's surface and on its side: a far side's texels at a silhouette are as near, but turned away
    same_side = torch.where(shown >= 0, face_side[shown.clamp(min=0)] == side, side)
    front = (shown == face) | (same_side & (depth <= nearest[py, px] + footprint * (1 + slope)))
    facing = ((cos - FACING[0]) / (FACING[1] - FACING[0])).clamp(0, 1)
    rgb, mask = image.tensors(res, device)
    sample = torch.cat([rgb, mask[None]])
    grid = torch.stack([x / res * 2 - 1, y / res * 2 - 1], -1).view(1, 1, -1, 2)
    looked = F.grid_sample(sample[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
    weight = torch.where(on_image & front, facing * looked[3], torch.zeros_like(facing))
    texel_weight = torch.zeros(size, size, device=device)
    texel_weight[covered] = weight
    colour = torch.zeros(size, size, 3, device=device)
    colour[covered] = looked[:3].T
    seen = (texel_weight > 0).cpu().numpy()
    colour_np = colour.cpu().numpy()
    if seen.any():  # texels without weight hold their nearest seen texel's colour, so encoding it makes no edge
        colour_np = fill_empty(colour_np, seen)
    return Projection(np.ascontiguousarray(colour_np, np.float32), texel_weight.cpu().numpy().astype(np.float32))


class ProjectedTarget:
    """The projection as the paint stages' losses: the latent texture against the projected colours' encoding
    (through the guidance's encoder, as a partial paint holds its context), the RGB texture against the
    colours, each over the texels the view sees, by their weight."""

    def __init__(self, projection: Projection, encode: Callable[[torch.Tensor], torch.Tensor], latent_size: int,
                 device: torch.device | str) -> None:
        self.rgb = torch.as_tensor(projection.colour, device=device).permute(2, 0, 1).contiguous()
        self.rgb_weight = torch.as_tensor(projection.weight, device=device)
        with torch.no_grad():
            self.latent = resize(encode(self.rgb[None]).float().to(device), latent_size)[0]
        factor = self.rgb_weight.shape[-1] // latent_size
        self.latent_weight = F.avg_pool2d(self.rgb_weight[None, None], factor)[0, 0]
        self.texels = {False: float(self.latent_weight.sum()), True: float(self.rgb_weight.sum()) / factor**2}

    def loss(self, texture: torch.Tensor, rgb: bool) -> torch.Tensor:
        """Weighted mean squared difference of `texture` (the RGB one with `rgb`, else the latent one)."""
        target, weight = (self.rgb, self.rgb_weight) if rgb else (self.latent, self.latent_weight)
        return (((texture - target) ** 2).mean(0) * weight).sum() / weight.sum().clamp(min=1e-12)

    def weight(self, strength: float, rgb: bool) -> float:
        """The loss's weight: `strength` per latent texel the view sees (8×8 RGB texels are one)."""
        return strength * self.texels[rgb]
