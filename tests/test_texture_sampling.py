"""Mip-mapped texture sampling: closed-form UV derivatives, every covered texel reached, nvdiffrast's maths."""

from __future__ import annotations

import pytest
import torch

from backend.cameras import Cameras
from backend.render import nvdiffrast_raster
from backend.render.mesh_render import render_mesh
from backend.render.rasterize import interpolate, rasterize
from backend.render.texture_sampling import (
    mip_pyramid,
    nvdiffrast_mipmap,
    sample_bilinear,
    sample_mipmap,
    uv_derivatives,
)

QUAD = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
QUAD_FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])
QUAD_UVS = QUAD[:, :2] + 0.5


def quad_view(elevation: float, radius: float, size: int, device: str = "cpu"):  # noqa: ANN201
    cams = Cameras.orbit(elevation, 30.0, radius, 50.0, device=device)
    v, f, uv = QUAD.to(device), QUAD_FACES.to(device), QUAD_UVS.to(device)
    clip = torch.einsum("bij,vj->bvi", cams.mvp(), torch.cat([v, torch.ones_like(v[:, :1])], -1))
    rast = rasterize(clip, f, (size, size)).to(device)
    return clip, rast, interpolate(uv, rast, f), uv_derivatives(clip, f, rast, uv)


def test_uv_derivatives_match_finite_differences_under_perspective():
    _, rast, uv, da = quad_view(40.0, 1.5, 64)
    hit = rast[..., 3] > 0
    inner = hit[:, 1:-1, 1:-1] & hit[:, 1:-1, 2:] & hit[:, 1:-1, :-2] & hit[:, 2:, 1:-1] & hit[:, :-2, 1:-1]
    dx = (uv[:, 1:-1, 2:] - uv[:, 1:-1, :-2]) / 2
    dy = (uv[:, 2:, 1:-1] - uv[:, :-2, 1:-1]) / 2
    ours = da[:, 1:-1, 1:-1]
    scale = ours[inner].abs().max()
    for got, want in ((ours[..., 0], dx[..., 0]), (ours[..., 2], dx[..., 1]),
                      (ours[..., 1], dy[..., 0]), (ours[..., 3], dy[..., 1])):
        assert (got - want)[inner].abs().max() < 2e-2 * scale  # central differences are second-order


def test_every_covered_texel_gets_gradient_with_mipmaps_not_with_bilinear():
    texture = torch.rand(3, 256, 256, requires_grad=True)
    reached = {}
    for filtering in ("bilinear", "mipmap"):
        texture.grad = None
        color, _ = render_mesh(QUAD, QUAD_FACES, Cameras.orbit(60.0, 30.0, 1.5, 50.0), 32, uvs=QUAD_UVS,
                               texture=texture, filtering=filtering)
        color.sum().backward()
        reached[filtering] = float((texture.grad.abs().sum(0) > 0).float().mean())
    assert reached["mipmap"] == 1.0
    assert reached["bilinear"] < 0.5, reached


def test_mipmap_keeps_flat_colours_and_is_bilinear_when_magnified():
    flat = torch.full((3, 64, 64), 0.3)
    _, rast, uv, da = quad_view(40.0, 1.5, 48)
    hit = rast[..., 3] > 0
    assert torch.allclose(sample_mipmap(flat, uv, da)[hit], torch.tensor(0.3), atol=1e-6)
    texture = torch.rand(3, 8, 8)  # 8 texels across ~30 pixels: magnified, level 0 everywhere
    assert torch.allclose(sample_mipmap(texture, uv, da)[hit], sample_bilinear(texture, uv)[hit], atol=1e-5)
    assert [tuple(level.shape[-2:]) for level in mip_pyramid(torch.zeros(4, 24, 24))] == [(24, 24), (12, 12),
                                                                                         (6, 6), (3, 3)]


@pytest.mark.skipif(not nvdiffrast_raster.available(), reason="needs CUDA and nvdiffrast")
def test_torch_mipmaps_agree_with_nvdiffrast_linear_mipmap_linear():
    _, rast, uv, da = quad_view(70.0, 2.5, 64, device="cuda")
    texture = torch.rand(3, 256, 256, device="cuda", requires_grad=True)
    ours = sample_mipmap(texture, uv, da)
    (ours * torch.linspace(0, 1, 3, device="cuda")).sum().backward()
    grad_ours, texture.grad = texture.grad, None
    theirs = nvdiffrast_mipmap(texture, uv, da)
    (theirs * torch.linspace(0, 1, 3, device="cuda")).sum().backward()
    hit = rast[..., 3] > 0
    assert (ours - theirs)[hit].abs().max() < 2e-3
    assert torch.allclose(grad_ours, texture.grad, atol=2e-3)
