"""TargetGuidance: the analytic prior of a known coloured mesh G.

The optimal denoiser of a data distribution concentrated on G's render z*_c from camera c is
ε̂(z_t, t, c) = (z_t − √ᾱ_t·z*_c)/√(1 − ᾱ_t). Score distillation with it pulls every render toward G's
render from the same camera, and a multi-step denoise returns z*_c exactly, so the whole pipeline
(cameras, rendering, gradients, export) can be checked against a known answer. It ignores the prompt,
the noise and the guidance scale (they cancel): a user runs it to check that an install works end to end;
`MixtureGuidance` is the known answer in which they matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.cameras import Cameras
from backend.guidance.analytic import VAE_FACTOR, AnalyticGuidance, epsilon_of, sd_scheduler
from backend.guidance.base import NoisePrediction, Prompt
from backend.mesh import Mesh, load_mesh

__all__ = ["VAE_FACTOR", "TargetGuidance", "sd_scheduler", "vertex_colored"]


class TargetGuidance(AnalyticGuidance):
    prompt_matters = False  # one known answer, whatever the prompt

    def __init__(self, mesh: Mesh, device: torch.device | str = "cpu",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__([mesh], device, background, names=["target mesh"])
        self.mesh = mesh

    @staticmethod
    def from_file(path: str | Path, device: torch.device | str = "cpu") -> TargetGuidance:
        return TargetGuidance(load_mesh(path, "target mesh"), device)

    def render_rgb(self, cameras: Cameras, size: int, supersample: int = 2) -> torch.Tensor:
        """G's render [B, 3, size, size] in [0, 1] over the backdrop."""
        return self.render_target(0, cameras, size, supersample)

    def target_latents(self, cameras: Cameras, size: int) -> torch.Tensor:
        """z*_c [B, 4, size, size]: G's render from each camera, in latent space."""
        return self.all_target_latents(cameras, size)[0]

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras) -> NoisePrediction:
        with torch.no_grad():
            z_star = self.target_latents(cameras, z_t.shape[-1]).to(z_t)
            eps = epsilon_of(z_t, self.alphas_cumprod[t], z_star).float()
        # the prior is the same with or without the prompt: one estimate is both branches
        return NoisePrediction(eps, eps)

    def describe(self) -> str:
        return f"TargetGuidance ({len(self.mesh.faces)} faces)"


def vertex_colored(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> Mesh:
    """A convenience for building targets in code."""
    return Mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int64),
                vertex_colors=np.asarray(colors, np.float32))
