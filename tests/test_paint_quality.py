"""Latent-Paint at the default texture and render sizes: the whole surface, no init noise, albedo under lights.

Known answers come from `TargetGuidance` on the two-tone box: every face's colour is known, undersides
included. Settings (CPU): 1024² texture, 64² renders, 600 steps at a raised learning rate.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from shapes import face_texels, surface_psnr, two_tone_box

from backend.cameras import Cameras
from backend.config import merge
from backend.guidance.target import TargetGuidance
from backend.render.rasterize import rasterize
from backend.tasks.paint import PaintConfig, paint

DEFAULT_SIZES = {"iters": 600, "lr": 5e-2, "loop": {"checkpoint_every": 0}}  # resolution 64, texture 1024


def face_colours(mesh) -> np.ndarray:  # noqa: ANN001
    return mesh.vertex_colors[mesh.faces].mean(1)


def flat_faces(mesh, margin: float = 0.15) -> np.ndarray:  # noqa: ANN001
    """Red faces well away from the red/blue seam: one flat colour."""
    centroid = mesh.vertices[mesh.faces].mean(1)
    return np.flatnonzero(centroid[:, 2] > 0.5 + margin)


def known_answer_render_std(guidance: TargetGuidance, faces: np.ndarray, size: int = 64) -> float:
    """Per-channel std (8-bit levels) of the target's own renders over the pixels that only `faces` cover."""
    cams = Cameras.orbit([30.0, 30.0, 60.0], [0.0, 120.0, 240.0], 1.3, 50.0)
    render = (guidance.render_rgb(cams, size).permute(0, 2, 3, 1) * 255).round().double().numpy()
    target = guidance._targets[0]
    verts = target.vertices
    clip = torch.einsum("bij,vj->bvi", cams.mvp(), torch.cat([verts, torch.ones_like(verts[:, :1])], -1))
    ids = rasterize(clip, target.faces, (size * 2, size * 2))[..., 3].long().numpy() - 1
    inside = np.isin(ids, faces).reshape(3, size, 2, size, 2).all((2, 4))  # pixels whose samples all hit them
    inside = np.stack([binary_erosion(m) for m in inside])  # and away from their edges
    return float(render[inside].std(0).mean())


@pytest.mark.slow
def test_default_sizes_paint_every_face_without_noise(tmp_path):
    target = two_tone_box()
    bare = target.copy_with(vertex_colors=None)
    guidance = TargetGuidance(target)
    result = paint(merge(PaintConfig(prompt="a two-tone box"), DEFAULT_SIZES), guidance, bare, tmp_path / "box.glb")
    assert result.texture.shape == (1024, 1024, 3)
    assert np.array_equal(result.mesh.vertices, bare.vertices[result.vertex_map])  # zero vertex drift
    psnr = surface_psnr(result.mesh, result.texture, face_colours(target))
    # every face, undersides included
    normals = np.cross(*(target.vertices[target.faces[:, k]] - target.vertices[target.faces[:, 0]] for k in (1, 2)))
    under = np.flatnonzero(normals[:, 2] < -0.5 * np.linalg.norm(normals, axis=1))
    psnr_under = surface_psnr(result.mesh, result.texture, face_colours(target), under)
    # the flat red region: std inside it in the texture vs in the known answer's own renders of it
    flat = flat_faces(target)
    # one latent texel (8 texels) in from the charts' edges, as the render's pixels are one pixel in from theirs:
    # the decoder's upsampling blends a chart's edge with its gutter
    inner = face_texels(result.mesh, 1024, flat, erode=8)
    # in float64: a float32 mean over 10⁵ texels near 217 drifts by most of a level, which the std then counts
    texel_std = float(result.texture[inner].astype(np.float64).std(0).mean())
    render_std = known_answer_render_std(guidance, flat)
    print(f"paint at 1024²/64²: PSNR {psnr:.1f} dB over all {len(target.faces)} faces, {psnr_under:.1f} dB over "
          f"the {len(under)} underside faces; flat-region std {texel_std:.2f} levels (known answer's render "
          f"{render_std:.2f})")
    assert psnr >= 25 and psnr_under >= 25
    # measured 0.245 against the render's 0.13 (seeds 1-3: 0.28, 0.28, 0.21); 0.70 before the smoothness
    # prior, the one-latent-texel gutter and the background's network rate; 3.1 from the noisy init, whose
    # own std was 24. What is left is mostly 8-bit rounding: red's blue is 25.5 levels, on a rounding
    # boundary, and its green 30.6, a tenth of a level above one, so texels a tenth of a level apart already
    # round apart (float noise ~0.1 level). Annealing over the last half instead of 30% averages 0.22 over
    # the four seeds, but at Latent-Paint's own rate (1e-2, 1,500 steps) costs 9 dB of PSNR
    assert texel_std <= 2 * render_std, "the flat region is noisier than the known answer's own render"


class LitTarget(TargetGuidance):
    """The known answer always lit when the cameras carry a light, whatever the painter's shading mode."""

    def render_target(self, index: int, cameras: Cameras, size: int, supersample: int = 2) -> torch.Tensor:
        if cameras.light is not None:
            cameras = replace(cameras, shading="lit")
        return super().render_target(index, cameras, size, supersample)


# the latent stage paints the albedo (its renders are unlit); the lit RGB stage must keep it, not bake light in
SHADED = {"resolution": 32, "texture_size": 256, "iters": 300, "finetune_iters": 100, "finetune_resolution": 64,
          "lr": 5e-2, "loop": {"checkpoint_every": 0}, "light": {"p_lit": 1.0, "p_textureless": 0.0}}


@pytest.mark.slow
def test_lit_fine_tuning_returns_the_albedo(tmp_path):
    target = two_tone_box()
    bare = target.copy_with(vertex_colors=None)
    scores = {}
    for shading, light in (("on", {}), ("off", {"p_lit": 0.0})):
        config = merge(PaintConfig(prompt="a two-tone box"), {**SHADED, "light": {**SHADED["light"], **light}})
        result = paint(config, LitTarget(target), bare, tmp_path / f"box-{shading}.glb")
        scores[shading] = surface_psnr(result.mesh, result.texture, face_colours(target))
    print(f"albedo PSNR with shading on {scores['on']:.1f} dB, off {scores['off']:.1f} dB")
    # measured: on 29.4 dB, off 26.4 dB (27.9 before the RGB stage; at the latent stage's rate, 25.9 and 15.4)
    assert scores["on"] >= 25
    assert scores["off"] < scores["on"] - 2
