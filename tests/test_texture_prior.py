"""The paint texture's smoothness prior and the atlas facts it stands on: which texels share a chart,
how wide the gutters of a painting atlas are, and that the prior leaves "seen" to the renders."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from shapes import two_tone_box

from backend.cameras import Cameras
from backend.regularisers import texture_smoothness
from backend.render.atlas import chart_neighbours, face_charts, texel_charts
from backend.scene.latent_texture import LatentTexture
from backend.tasks.paint import PAINT_PADDING, VAE_FACTOR, uv_mapped


def two_quads(gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two UV squares side by side, `gap` apart, each two triangles with their own copies of the corners."""
    left = np.array([[0.1, 0.1], [0.45, 0.1], [0.45, 0.9], [0.1, 0.9]])
    right = left + [0.35 + gap, 0.0]
    quads = [left, right]
    uvs = np.concatenate([q[[0, 1, 2, 0, 2, 3]] for q in quads]).astype(np.float32)
    faces = np.arange(len(uvs)).reshape(-1, 3)
    return torch.as_tensor(uvs), torch.as_tensor(faces)


def test_faces_with_their_own_corner_copies_join_into_their_charts():
    uvs, faces = two_quads(0.1)
    labels = face_charts(uvs.numpy(), faces.numpy())
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


def test_texels_take_the_chart_they_mostly_cover_and_neighbours_stay_within_one():
    uvs, faces = two_quads(0.1)
    charts = texel_charts(uvs, faces, 32)
    assert set(np.unique(charts)) == {-1, *np.unique(face_charts(uvs.numpy(), faces.numpy()))}
    row = charts[16]
    assert (row[:3] == -1).all() and len(set(row[4:14])) == 1 and len(set(row[18:28])) == 1
    right, down = chart_neighbours(charts)
    # left chart: texels 3…14, right: 17…28 (u 0.55 is texel 17.6)
    assert (row[14] >= 0) and (row[15:17] == -1).all() and row[17] >= 0 and row[14] != row[17]
    assert not right[:, 14:17].any(), "no pair spans the gutter"
    assert right[16, 5] and down[10, 5]
    # a chart thinner than a texel still claims the texels it crosses
    thin_uvs = torch.tensor([[0.5, 0.1], [0.51, 0.1], [0.51, 0.9]])
    assert (texel_charts(thin_uvs, torch.tensor([[0, 1, 2]]), 8) >= 0).any()


def test_smoothness_is_quadratic_below_its_edge_and_linear_above():
    right, down = torch.ones(1, 1, dtype=torch.bool), torch.zeros(0, 2, dtype=torch.bool)

    def penalty(d: float) -> float:
        return float(texture_smoothness(torch.tensor([[[0.0, d]]]), right, down, edge=0.1))

    assert np.isclose(penalty(0.05), 0.05**2) and np.isclose(penalty(0.1), 0.1**2)
    assert np.isclose(penalty(1.1) - penalty(1.0), 2 * 0.1 * 0.1)  # slope 2·edge: an edge's pull is capped
    masked = texture_smoothness(torch.tensor([[[0.0, 1.0]]]), ~right, down, edge=0.1)
    assert float(masked) == 0.0


def test_smoothness_removes_speckle_a_view_cannot_see_and_does_not_mark_texels_seen():
    box = two_tone_box()
    mapped, _ = uv_mapped(box.copy_with(vertex_colors=None), 256)
    scene = LatentTexture(torch.as_tensor(mapped.vertices - mapped.vertices.mean(0)), torch.as_tensor(mapped.faces),
                          torch.as_tensor(mapped.uvs), 32)
    noise = torch.randn(scene.texture.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    scene.texture.data += noise
    before = float(scene.smoothness(rgb=False).detach())
    scene.smoothness(rgb=False).backward()
    assert before > 0 and int(scene.seen.sum()) == 0, "the prior reaches texels, but no render has seen them"
    optimiser = torch.optim.Adam([scene.texture], lr=1e-2)
    for _ in range(50):
        optimiser.zero_grad()
        scene.smoothness(rgb=False).backward()
        optimiser.step()
    assert float(scene.smoothness(rgb=False).detach()) < 0.2 * before
    scene.texture.grad = None
    out = scene.render(Cameras.orbit([30.0], [0.0], 3.0, 50.0), 16)
    out.image.sum().backward()
    assert 0 < int(scene.seen.sum()) < scene.seen.numel()


def test_a_painting_atlas_keeps_one_latent_texel_between_charts():
    mapped, _ = uv_mapped(two_tone_box().copy_with(vertex_colors=None), 1024)
    assert PAINT_PADDING == VAE_FACTOR
    charts = texel_charts(torch.as_tensor(mapped.uvs), torch.as_tensor(mapped.faces), 1024, min_samples=1024)
    # the nearest texel of another chart, from every texel of each chart
    closest = np.inf
    for c in np.unique(charts[charts >= 0]):
        closest = min(closest, distance_transform_edt(~((charts >= 0) & (charts != c)))[charts == c].min())
    # xatlas' padding counts whole texels between the charts' rasterised edges, give or take one
    assert closest >= PAINT_PADDING - 1, f"charts {closest:.1f} texels apart"
