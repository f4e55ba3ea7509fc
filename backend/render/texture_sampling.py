"""Area (mip-mapped) texture sampling: nvdiffrast's `linear-mipmap-linear`, with a pure-torch twin.

A texture seen from far away is under-sampled by bilinear lookups: texels between the lookups get no
gradient, so whatever they started as survives optimisation. Trilinear mip-mapping samples a level whose
texels are about one pixel wide, and each level is the 2×2 box average of the one below, so a pixel's
gradient reaches every texel under its footprint.

The level of detail is nvdiffrast's: with J the Jacobian of texel coordinates with respect to pixels,
lod = ½·log2(σ_max(J)²), clamped to [0, last level]; colour = lerp(bilinear(level ⌊lod⌋),
bilinear(level ⌊lod⌋ + 1), frac(lod)). Bilinear lookups clamp at the border, texel centres at (i + ½)/W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mip_pyramid(texture: torch.Tensor) -> list[torch.Tensor]:
    """`texture` [C, H, W] and its 2×2 box-averaged halvings, while both sides are even (differentiable)."""
    levels = [texture]
    while levels[-1].shape[-1] % 2 == 0 and levels[-1].shape[-2] % 2 == 0 and min(levels[-1].shape[-2:]) > 1:
        levels.append(F.avg_pool2d(levels[-1][None], 2)[0])
    return levels


def uv_derivatives(clip: torch.Tensor, faces: torch.Tensor, rast: torch.Tensor, uvs: torch.Tensor) -> torch.Tensor:
    """d(u, v)/d(x, y) per pixel [B, H, W, 4] = (du/dx, du/dy, dv/dx, dv/dy), in UV units per pixel.

    `clip` [B, V, 4] are the vertices the rasteriser saw and `rast` its output (row 0 on top, x right,
    y down; nvdiffrast's `rast_db` layout up to the sign of y). Screen-space barycentrics are linear in
    the pixel position; the perspective-correct ones in `rast` are their ratio with 1/w, differentiated
    here in closed form. Empty pixels get zeros.
    """
    b, h, w, _ = rast.shape
    ids = rast[..., 3].long()
    hit = ids > 0
    tri = faces.long()[(ids - 1).clamp(min=0)]  # [B, H, W, 3]
    batch = torch.arange(b, device=rast.device).view(b, 1, 1, 1)
    corner = clip[batch, tri]  # [B, H, W, 3, 4]
    cw = corner[..., 3].clamp(min=1e-8)
    sx = (corner[..., 0] / cw + 1) * 0.5 * w
    sy = (1 - corner[..., 1] / cw) * 0.5 * h
    x0, x1, x2 = sx.unbind(-1)
    y0, y1, y2 = sy.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    area = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
    # screen-space barycentric gradients, constant over a triangle
    dldx = torch.stack([y1 - y2, y2 - y0, y0 - y1], -1) / area[..., None]
    dldy = torch.stack([x2 - x1, x0 - x2, x1 - x0], -1) / area[..., None]
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, v, 1 - u - v], -1)  # perspective-correct
    inv_s = (bary * cw).sum(-1, keepdim=True)  # 1 / Σ λ_j / w_j
    dbdx = inv_s * (dldx / cw - bary * (dldx / cw).sum(-1, keepdim=True))
    dbdy = inv_s * (dldy / cw - bary * (dldy / cw).sum(-1, keepdim=True))
    corner_uv = uvs[tri]  # [B, H, W, 3, 2]
    duv_dx = (dbdx[..., None] * corner_uv).sum(-2)
    duv_dy = (dbdy[..., None] * corner_uv).sum(-2)
    out = torch.stack([duv_dx[..., 0], duv_dy[..., 0], duv_dx[..., 1], duv_dy[..., 1]], -1)
    return out * hit[..., None]


def mip_level(uv_da: torch.Tensor, height: int, width: int, last: int) -> torch.Tensor:
    """nvdiffrast's level of detail [...] from `uv_da` [..., 4], clamped to [0, last]."""
    dsdx, dsdy = uv_da[..., 0] * width, uv_da[..., 1] * width
    dtdx, dtdy = uv_da[..., 2] * height, uv_da[..., 3] * height
    a = dsdx * dsdx + dtdx * dtdx
    b = dsdy * dsdy + dtdy * dtdy
    c = dsdx * dsdy + dtdx * dtdy
    major = 0.5 * (a + b) + torch.sqrt(0.25 * (a - b) ** 2 + c * c)  # σ_max(J)²
    return (0.5 * torch.log2(major.clamp(min=1e-30))).clamp(0, last)


def _bilinear(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `texture` [C, H, W] at `uv` [N, 2] (v = 0 is the bottom row) → [N, C]."""
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1).view(1, 1, -1, 2)
    out = F.grid_sample(texture[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def sample_bilinear(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `texture` [C, Ht, Wt] at UVs [..., 2] → [..., C] (no mip-mapping)."""
    return _bilinear(texture, uv.reshape(-1, 2)).reshape(*uv.shape[:-1], texture.shape[0])


def sample_mipmap(texture: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor) -> torch.Tensor:
    """Trilinear (linear-mipmap-linear) lookup of `texture` [C, Ht, Wt] at `uv` [..., 2] → [..., C].

    Each level is read only at the lookups that use it, so the cost is about two bilinear lookups.
    Differentiable with respect to the texture (through the pyramid).
    """
    levels = mip_pyramid(texture)
    flat_uv, flat_da = uv.reshape(-1, 2), uv_da.reshape(-1, 4)
    lod = mip_level(flat_da, texture.shape[-2], texture.shape[-1], len(levels) - 1)
    low = lod.floor().long()
    frac = lod - low
    out = torch.zeros(len(flat_uv), texture.shape[0], device=texture.device, dtype=texture.dtype)
    for k, level in enumerate(levels):
        weight = torch.where(low == k, 1 - frac, torch.zeros_like(frac)) + torch.where(low == k - 1, frac, 0.0)
        idx = torch.nonzero(weight > 0).squeeze(1)
        if idx.numel():
            out = out.index_add(0, idx, _bilinear(level, flat_uv[idx]) * weight[idx, None])
    return out.reshape(*uv.shape[:-1], texture.shape[0])


def nvdiffrast_mipmap(texture: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor) -> torch.Tensor:
    """`sample_mipmap` on CUDA through nvdiffrast's `linear-mipmap-linear` (uv [B, H, W, 2], uv_da [B, H, W, 4])."""
    import nvdiffrast.torch as dr

    # nvdiffrast's texel row 0 is v = 0, ours is v = 1: hand it the rows bottom-up, UVs unchanged
    tex = texture.permute(1, 2, 0).flip(0)[None].contiguous()
    last = len(mip_pyramid(texture)) - 1
    return dr.texture(tex, uv.contiguous(), uv_da.contiguous(), filter_mode="linear-mipmap-linear",
                      boundary_mode="clamp", max_mip_level=last)
