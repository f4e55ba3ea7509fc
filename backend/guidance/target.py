"""TargetGuidance: the analytic prior of a known coloured mesh G.

The optimal denoiser of a data distribution concentrated on G's render z*_c from camera c is
ε̂(z_t, t, c) = (z_t − √ᾱ_t·z*_c)/√(1 − ᾱ_t). Score distillation with it pulls every render toward G's
render from the same camera, and a multi-step denoise returns z*_c exactly, so the whole pipeline
(cameras, rendering, gradients, export) can be checked against a known answer. Its VAE is the linear
latent↔RGB pair (exact for RGB) with SD's 8× spatial factor, so it is fast on a CPU. It ignores the
prompt: a user runs it to check that an install works end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from backend.cameras import Cameras
from backend.errors import InputError
from backend.guidance.base import Guidance, Prompt
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.mesh import Frame, Mesh, load_mesh
from backend.render.mesh_render import render_mesh

VAE_FACTOR = 8  # pixels per latent, as SD's VAE


def sd_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.x's noise schedule (scaled-linear betas, 1000 steps)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


class TargetGuidance(Guidance):
    def __init__(self, mesh: Mesh, device: torch.device | str = "cpu",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        if mesh.vertex_colors is None and (mesh.texture is None or mesh.uvs is None):
            raise InputError("the target mesh has no colours", "give it vertex colours or a base-colour texture")
        self.mesh = mesh
        self.device = torch.device(device)
        self.scheduler = sd_scheduler()
        self.image_size = 512
        self.latent_size = 64
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self._faces = torch.as_tensor(mesh.faces, device=self.device)
        self._colors = None if mesh.vertex_colors is None else torch.as_tensor(mesh.vertex_colors,
                                                                              device=self.device)
        self._uvs = None if mesh.uvs is None else torch.as_tensor(mesh.uvs, device=self.device)
        self._texture = None if mesh.texture is None else (
            torch.as_tensor(mesh.texture, device=self.device).permute(2, 0, 1).float() / 255.0)
        self.set_frame(Frame.fit(mesh.vertices))

    @staticmethod
    def from_file(path: str | Path, device: torch.device | str = "cpu") -> TargetGuidance:
        return TargetGuidance(load_mesh(path, "target mesh"), device)

    def suggested_frame(self) -> Frame:
        return self.frame

    def set_frame(self, frame: Frame) -> None:
        """Place G in the optimisation's unit volume the way the task placed its input."""
        self.frame = frame
        self._memo = None
        self._vertices = torch.as_tensor(frame.to_unit(self.mesh.vertices), device=self.device)

    def render_rgb(self, cameras: Cameras, size: int, supersample: int = 2) -> torch.Tensor:
        """G's render [B, 3, size, size] in [0, 1] over the background, shaded with the cameras' light."""
        color, coverage = render_mesh(self._vertices, self._faces, cameras, size, vertex_colors=self._colors,
                                      uvs=self._uvs, texture=self._texture, supersample=supersample,
                                      lighting=True)
        return color + (1 - coverage[:, None]) * self.background.view(1, 3, 1, 1)

    def target_latents(self, cameras: Cameras, size: int) -> torch.Tensor:
        """z*_c: G's render from each camera, in latent space at size × size.

        Equal to `encode` of a render at 8× the size (the encoder is an 8× area average and a linear map),
        but rendered at 4× supersampling: 16 times fewer pixels for the same antialiasing to a few percent.
        """
        # multi-step objectives ask about the same cameras several times per step: render them once
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] is cameras and memo[1] == size:
            return memo[2]
        z_star = rgb_to_latent(self.render_rgb(cameras, size, supersample=4))
        self._memo = (cameras, size, z_star)
        return z_star

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras,
                      guidance_scale: float) -> torch.Tensor:
        with torch.no_grad():
            z_star = self.target_latents(cameras, z_t.shape[-1]).to(z_t)
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(z_t)
            # the prior is the same with or without the prompt, so guidance leaves it unchanged
            return ((z_t - a.sqrt() * z_star) / (1 - a).sqrt()).float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return rgb_to_latent(F.avg_pool2d(images.float(), VAE_FACTOR))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        rgb = latent_to_rgb(latents.float())
        return F.interpolate(rgb, scale_factor=VAE_FACTOR, mode="bilinear", align_corners=False).clamp(0, 1)

    def describe(self) -> str:
        return f"TargetGuidance ({len(self.mesh.faces)} faces)"


def vertex_colored(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> Mesh:
    """A convenience for building targets in code."""
    return Mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int64),
                vertex_colors=np.asarray(colors, np.float32))
