"""What the analytic priors share: known coloured meshes, rendered from the step's own cameras.

`TargetGuidance` (one mesh) and `MixtureGuidance` (several captioned meshes) are optimal denoisers of
data distributions made of these renders. Both use the same mesh checks, the same frame (fitted over all
their meshes together, then set by the task), the same renderer and compositing (over the step's random
background when the camera batch carries one) and the same linear latent↔RGB pair as their VAE (exact for
RGB, with SD's 8× spatial factor), so they are fast on a CPU and their answers are exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from backend.cameras import Cameras
from backend.errors import InputError
from backend.guidance.base import Guidance
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.mesh import Frame, Mesh
from backend.render.mesh_render import render_mesh

VAE_FACTOR = 8  # pixels per latent, as SD's VAE
# a part of a known answer the colour of a fixed background carries no signal, so the analytic priors
# ask for random solid backgrounds on half the steps; the learned background trains on the others
RANDOM_BACKGROUND = 0.5


def sd_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.x's noise schedule (scaled-linear betas, 1000 steps)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


class _Colored:
    """One known mesh's tensors on the guidance's device (vertices are placed by the frame)."""

    def __init__(self, mesh: Mesh, device: torch.device) -> None:
        self.mesh = mesh
        self.faces = torch.as_tensor(mesh.faces, device=device)
        self.colors = None if mesh.vertex_colors is None else torch.as_tensor(mesh.vertex_colors, device=device)
        self.uvs = None if mesh.uvs is None else torch.as_tensor(mesh.uvs, device=device)
        self.texture = None if mesh.texture is None else (
            torch.as_tensor(mesh.texture, device=device).permute(2, 0, 1).float() / 255.0)
        self.vertices: torch.Tensor | None = None


def has_colors(mesh: Mesh) -> bool:
    return mesh.vertex_colors is not None or (mesh.texture is not None and mesh.uvs is not None)


class AnalyticGuidance(Guidance):
    """An analytic prior over renders of known meshes; subclasses give `predict_noise`."""

    random_background = RANDOM_BACKGROUND

    def __init__(self, meshes: list[Mesh], device: torch.device | str = "cpu",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), names: list[str] | None = None) -> None:
        names = names or [f"target mesh {k + 1}" for k in range(len(meshes))]
        for mesh, name in zip(meshes, names, strict=True):
            if not has_colors(mesh):
                raise InputError(f"the {name} has no colours", "give it vertex colours or a base-colour texture")
        self.device = torch.device(device)
        self.scheduler = sd_scheduler()
        self.image_size = 512
        self.latent_size = 64
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self._targets = [_Colored(mesh, self.device) for mesh in meshes]
        self.set_frame(Frame.fit(np.concatenate([m.vertices for m in meshes])))

    def suggested_frame(self) -> Frame:
        return self.frame

    def set_frame(self, frame: Frame) -> None:
        """Place the meshes in the optimisation's unit volume the way the task placed its input."""
        self.frame = frame
        self._memo = None
        for target in self._targets:
            target.vertices = torch.as_tensor(frame.to_unit(target.mesh.vertices), device=self.device)

    def backdrop(self, cameras: Cameras) -> torch.Tensor:
        """The colour [B or 1, 3, 1, 1] answers are composited over: the step's random one, else the fixed one."""
        if cameras.background is not None:
            return cameras.background.to(self.device, torch.float32)[:, :, None, None]
        return self.background.view(1, 3, 1, 1)

    def render_target(self, index: int, cameras: Cameras, size: int, supersample: int = 2) -> torch.Tensor:
        """Mesh `index`'s render [B, 3, size, size] in [0, 1] over the backdrop, lit like the scene's render
        when the cameras carry a light (so the answer is the albedo under the same light)."""
        g = self._targets[index]
        color, coverage = render_mesh(g.vertices, g.faces, cameras, size, vertex_colors=g.colors, uvs=g.uvs,
                                      texture=g.texture, supersample=supersample, lit=True)
        return color + (1 - coverage[:, None]) * self.backdrop(cameras)

    def all_target_latents(self, cameras: Cameras, size: int) -> torch.Tensor:
        """z*_{k,c} [K, B, 4, size, size]: every mesh's render from each camera, in latent space.

        Equal to `encode` of a render at 8× the size (the encoder is an 8× area average and an affine map),
        but rendered at 4× supersampling: 16 times fewer pixels for the same antialiasing to a few percent.
        """
        # multi-step objectives ask about the same cameras several times per step: render them once
        memo = self._memo
        if memo is not None and memo[0] is cameras and memo[1] == size:
            return memo[2]
        z_star = torch.stack([rgb_to_latent(self.render_target(k, cameras, size, supersample=4))
                              for k in range(len(self._targets))])
        self._memo = (cameras, size, z_star)
        return z_star

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return rgb_to_latent(F.avg_pool2d(images.float(), VAE_FACTOR))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        rgb = latent_to_rgb(latents.float())
        return F.interpolate(rgb, scale_factor=VAE_FACTOR, mode="bilinear", align_corners=False).clamp(0, 1)


def epsilon_of(z_t: torch.Tensor, alpha_bar: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The noise a denoiser that answers x̂ implies: ε̂ = (z_t − √ᾱ·x̂)/√(1 − ᾱ)."""
    a = alpha_bar.view(-1, 1, 1, 1).to(z_t)
    return (z_t - a.sqrt() * x_hat) / (1 - a).sqrt()
