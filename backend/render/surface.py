"""Rendering a mesh whose geometry is being optimised: gradients reach the vertex positions.

The rasteriser (nvdiffrast on CUDA, the torch reference elsewhere) only says which triangle covers each
pixel; it is not differentiable. Two steps here make the image depend on the vertices smoothly:

- **Barycentrics** of every covered pixel are recomputed in torch from the clip-space vertices
  (perspective-correct), so interpolated positions, normals and the colours looked up at them carry
  gradients to the vertices, as nvdiffrast's `interpolate` does with its rasteriser's output.
- **Silhouette antialiasing** (nvdiffrast's analytic antialiasing, written in torch): where two
  neighbouring pixels see different, non-adjacent triangles, the front triangle's edge crosses the
  segment between their centres at a fraction s; the pixel on the far side of the midpoint is blended
  towards the other by |s − ½|. s depends on the edge's projected vertices, so moving a silhouette
  changes the image and its coverage continuously: this is how the shape outline receives gradients.

One code path on every device: only the triangle ids come from the device's rasteriser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.cameras import Cameras
from backend.render.mesh_render import rasterizer_for


@dataclass
class Surface:
    """What a camera batch sees of a mesh: per-pixel triangle ids and the covered pixels' attributes."""

    face: torch.Tensor  # [B, H, W] long, the covering triangle's index, −1 where empty
    depth: torch.Tensor  # [B, H, W] NDC depth (inf where empty), no gradient
    hit: torch.Tensor  # [B, H, W] bool
    bary: torch.Tensor  # [N, 3] perspective-correct barycentrics of the N covered pixels, differentiable
    clip: torch.Tensor  # [B, V, 4] clip-space vertices, differentiable

    @property
    def batch_index(self) -> torch.Tensor:
        """Which camera each covered pixel belongs to [N]."""
        return torch.nonzero(self.hit)[:, 0]

    def interpolate(self, attr: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Per-vertex `attr` [V, C] at the covered pixels [N, C] (differentiable in `attr` and the geometry)."""
        corner = attr[faces[self.face[self.hit]]]  # [N, 3, C]
        return (self.bary[..., None] * corner).sum(1)


def screen_xy(clip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel coordinates [..., 2] of clip-space points (x right, y down, pixel centres at +0.5)."""
    ndc = clip[..., :2] / clip[..., 3:4]
    return torch.stack([(ndc[..., 0] + 1) * 0.5 * w, (1 - ndc[..., 1]) * 0.5 * h], -1)


def rasterize_surface(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, size: int) -> Surface:
    """Rasterise `vertices` [V, 3] / `faces` [F, 3] from `cameras` at size² with differentiable barycentrics."""
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    clip = torch.einsum("bij,vj->bvi", cameras.mvp(), homo)
    rast = rasterizer_for(vertices.device)(clip.detach(), faces, (size, size))
    face = rast[..., 3].long() - 1
    hit = face >= 0
    depth = torch.where(hit, rast[..., 2], torch.full_like(rast[..., 2], float("inf")))
    b, py, px = torch.nonzero(hit, as_tuple=True)
    tri = faces[face[hit]]  # [N, 3]
    corners = clip[b[:, None], tri]  # [N, 3, 4]
    s = screen_xy(corners, size, size)
    cx, cy = px.to(s) + 0.5, py.to(s) + 0.5
    # screen-space barycentrics from edge functions, then perspective correction by 1/w
    x, y = s[..., 0], s[..., 1]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    b0 = ((x[:, 1] - cx) * (y[:, 2] - cy) - (x[:, 2] - cx) * (y[:, 1] - cy)) / area
    b1 = ((x[:, 2] - cx) * (y[:, 0] - cy) - (x[:, 0] - cx) * (y[:, 2] - cy)) / area
    bary = torch.stack([b0, b1, 1 - b0 - b1], -1) / corners[..., 3]
    bary = bary / bary.sum(-1, keepdim=True)
    return Surface(face, depth, hit, bary, clip)


def antialias(image: torch.Tensor, surface: Surface, faces: torch.Tensor) -> torch.Tensor:
    """`image` [B, H, W, C] with silhouette edges blended by where they cross between pixel centres."""
    out = image
    for dim in (1, 2):  # vertical, then horizontal neighbours
        out = out + _edge_blend(image, surface, faces, dim)
    return out


def _edge_blend(image: torch.Tensor, surface: Surface, faces: torch.Tensor, dim: int) -> torch.Tensor:
    h, w = image.shape[1:3]
    n = image.shape[dim]
    first = [slice(None)] * 3
    second = [slice(None)] * 3
    first[dim], second[dim] = slice(0, n - 1), slice(1, n)
    fa, fb = surface.face[tuple(first)], surface.face[tuple(second)]
    da, db = surface.depth[tuple(first)], surface.depth[tuple(second)]
    differ = (fa != fb) & ((fa >= 0) | (fb >= 0))
    delta = torch.zeros_like(image)
    if not differ.any():
        return delta
    # not a silhouette where the two triangles share an edge (a continuous surface)
    ta, tb = faces[fa.clamp(min=0)], faces[fb.clamp(min=0)]
    shared = (ta[..., :, None] == tb[..., None, :]).any(-1).sum(-1)
    differ &= ~((fa >= 0) & (fb >= 0) & (shared >= 2))
    bi, yi, xi = torch.nonzero(differ, as_tuple=True)
    if len(bi) == 0:
        return delta
    step = torch.tensor([0, 1, 0] if dim == 1 else [0, 0, 1], device=bi.device)
    a_first = da[bi, yi, xi] <= db[bi, yi, xi]  # the front pixel of each pair
    p = torch.stack([bi, yi, xi], -1)
    q = p + step
    front = torch.where(a_first[:, None], p, q)
    back = torch.where(a_first[:, None], q, p)
    tri = faces[surface.face[front[:, 0], front[:, 1], front[:, 2]]]  # [K, 3]
    xy = screen_xy(surface.clip[front[:, 0, None], tri], h, w)  # [K, 3, 2]
    centre_f = front[:, [2, 1]].to(xy) + 0.5  # (x, y)
    centre_b = back[:, [2, 1]].to(xy) + 0.5
    # signed edge functions of the three edges (positive inside), at both pixel centres
    e0, e1 = xy, xy.roll(-1, 1)  # edge k runs from corner k to corner k+1

    def edge_fn(c: torch.Tensor) -> torch.Tensor:
        return (e1[..., 0] - e0[..., 0]) * (c[:, None, 1] - e0[..., 1]) - (e1[..., 1] - e0[..., 1]) * (
            c[:, None, 0] - e0[..., 0])

    ef, eb = edge_fn(centre_f), edge_fn(centre_b)
    orient = torch.sign(ef.detach().sum(-1)).clamp(min=-1)[:, None]  # screen winding of each triangle
    ef, eb = ef * orient, eb * orient
    cross = (eb < 0) & (ef >= 0)
    s = torch.where(cross, ef / (ef - eb).clamp(min=1e-12), torch.full_like(ef, 2.0)).min(-1).values
    valid = s <= 1
    front, back, s = front[valid], back[valid], s[valid].clamp(0, 1)
    cf = image[front[:, 0], front[:, 1], front[:, 2]]
    cb = image[back[:, 0], back[:, 1], back[:, 2]]
    # past the midpoint the front surface covers part of the back pixel; short of it, it uncovers its own
    over = (s - 0.5).clamp(min=0)[:, None]
    under = (0.5 - s).clamp(min=0)[:, None]
    # each silhouette is crossed by both the horizontal and the vertical pairs: each pass carries half
    flat = delta.view(-1, delta.shape[-1])
    stride = torch.tensor([h * w, w, 1], device=front.device)
    flat.index_add_(0, (back * stride).sum(-1), over * (cf - cb) / 2)
    flat.index_add_(0, (front * stride).sum(-1), under * (cb - cf) / 2)
    return delta
