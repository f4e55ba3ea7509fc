"""DreamFusion shading in the RGB stage: density normals, the orientation loss, textureless renders, and the
known-answer prior shading its own answer with the step's light."""

from __future__ import annotations

import numpy as np
import torch
from shapes import two_tone_box

from backend.cameras import Cameras
from backend.guidance.target import TargetGuidance
from backend.regularisers import orientation
from backend.render.volume import Shader, VolumeConfig, VolumeRenderer
from backend.shading import Light, shade


def ball(x: torch.Tensor, radius: float = 0.5, inverted: bool = False) -> torch.Tensor:
    """A soft opaque ball (or, inverted, a solid with a ball-shaped hole) of density up to 50."""
    inside = (radius - x.norm(dim=-1)) / 0.03
    return 50 * torch.sigmoid(-inside if inverted else inside)


def render(density, colours=None, mode="albedo", light=None, size=16):
    cams = Cameras.orbit(20.0, 30.0, 2.0, 40.0)
    renderer = VolumeRenderer(VolumeConfig(samples=64), bound=1.0)

    def field(x):
        c = colours(x) if colours is not None else torch.full((len(x), 3), 0.5)
        return density(x), c

    lit = None if mode == "albedo" else (lambda c, n, p, cam: shade(c, n, p, light, mode, cam))
    o, d = cams.rays(size)
    return renderer.render(field, lambda d: torch.zeros(*d.shape[:-1], 3), o, d, None, Shader(density, lit))


def test_density_normals_of_a_ball_point_outwards():
    out = render(ball)
    points = out.points.reshape(-1, 3)
    radial = points / points.norm(dim=-1, keepdim=True)
    dots = (out.normals.reshape(-1, 3) * radial).sum(-1)
    w = out.weights.reshape(-1)
    assert float((w * dots).sum() / w.sum()) >= 0.95


def test_orientation_loss_is_zero_for_normals_facing_the_camera_and_positive_otherwise():
    facing = render(ball)
    # not exactly 0: rays grazing the soft ball's rim leave it through its far side
    assert float(orientation(facing.normals, facing.directions, facing.weights)) < 5e-3
    # inside a solid with a hole the first surface hit has normals pointing into the solid, away from the camera
    away = render(lambda x: ball(x, 0.9, inverted=True))
    assert float(orientation(away.normals, away.directions, away.weights)) > 0.1


def test_orientation_loss_turns_normals_and_never_removes_density_through_the_ray_weights():
    """Scaling a density leaves its normals' directions as they are and moves only the ray weights: the
    orientation loss has no gradient for that scale (DreamFusion's loss: the weights say where the surface is,
    they are not to be lowered), while its gradient for the normals themselves is there."""
    scale = torch.tensor(1.0, requires_grad=True)
    hole = render(lambda x: scale * ball(x, 0.9, inverted=True))  # normals face away from the camera
    loss = orientation(hole.normals, hole.directions, hole.weights)
    assert float(loss) > 0.1
    (by_scale,) = torch.autograd.grad(loss, scale, retain_graph=True)
    # the same sum with the weights' gradient kept would lower itself by thinning the density
    facing = (hole.normals * hole.directions[:, None]).sum(-1).clamp(min=0)
    (through_weights,) = torch.autograd.grad((hole.weights * facing**2).sum(-1).mean(), scale, retain_graph=True)
    assert float(through_weights) > 1e-2 and abs(float(by_scale)) < 1e-3 * float(through_weights)
    (by_normals,) = torch.autograd.grad(loss, hole.normals)
    assert float(by_normals.abs().max()) > 0


def test_textureless_renders_do_not_depend_on_albedo_and_lit_ones_do():
    light = Light(torch.tensor([[1.0, -1.0, 1.0]]), torch.full((1, 3), 0.9), torch.full((1, 3), 0.1))
    red = lambda x: torch.tensor([[1.0, 0.0, 0.0]]).expand(len(x), -1)  # noqa: E731
    blue = lambda x: torch.tensor([[0.0, 0.0, 1.0]]).expand(len(x), -1)  # noqa: E731
    a = render(ball, red, "textureless", light).image
    b = render(ball, blue, "textureless", light).image
    assert torch.allclose(a, b)
    assert float(a.std()) > 0.05  # shading varies over the ball
    lit_red, lit_blue = render(ball, red, "lit", light).image, render(ball, blue, "lit", light).image
    assert not torch.allclose(lit_red, lit_blue)


def test_target_guidance_shades_its_answer_with_the_cameras_light():
    target = TargetGuidance(two_tone_box())
    cams = Cameras.orbit(20.0, 30.0, 1.5, 50.0)
    light = Light(cams.position * 1.2, torch.full((1, 3), 0.9), torch.full((1, 3), 0.1))
    albedo = target.render_rgb(cams, 32)
    lit = target.render_rgb(Cameras(**{**cams.__dict__, "light": light, "shading": "lit"}), 32)
    textureless = target.render_rgb(Cameras(**{**cams.__dict__, "light": light, "shading": "textureless"}), 32)
    assert not torch.allclose(albedo, lit)
    # the box's faces are flat: within a face textureless shading is one grey, and the faces differ
    grey = textureless[0].permute(1, 2, 0).reshape(-1, 3)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    values = np.unique(np.round(grey[:, 0].numpy(), 2))
    assert len(values) >= 3
