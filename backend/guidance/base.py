"""What every 2D prior offers the optimisation loop.

A guidance owns its noise schedule (a diffusers scheduler), its image↔latent maps and its noise
prediction. Like a diffusers U-Net, `predict_noise` returns the raw parts of its prediction (unconditional,
conditional and Perp-Neg's negatives); the objective combines them (`NoisePrediction.guided` is classifier-free
guidance, `NoisePrediction.direction` the classifier score), so a new prior or a new objective is one file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from backend.cameras import Cameras
from backend.guidance import perp_neg
from backend.mesh import Frame
from backend.speed import SpeedConfig


@dataclass
class NoisePrediction:
    """A prior's raw noise estimates for one batch, float32 [B, 4, h, w] each, as ε (never v)."""

    uncond: torch.Tensor  # ε(z_t; negative prompt): classifier-free guidance's unconditional branch
    cond: torch.Tensor  # ε(z_t; y): the (view's) prompt; with Perp-Neg, the blend of its two nearest views
    negatives: torch.Tensor | None = None  # Perp-Neg: the other views' ε [N, B, 4, h, w]
    negative_weights: torch.Tensor | None = None  # and their weights [B, N]

    def direction(self) -> torch.Tensor:
        """The classifier score: ε_c − ε_u, or Perp-Neg's combination of it with the perpendicular negatives."""
        if self.negatives is None:
            return self.cond - self.uncond
        return perp_neg.direction(self.uncond, self.cond, self.negatives, self.negative_weights)

    def guided(self, scale: float) -> torch.Tensor:
        """ε̂ under classifier-free guidance at `scale` (with Perp-Neg's negatives when the prior made them)."""
        return classifier_free(self.uncond, self.direction(), scale)


def classifier_free(uncond: torch.Tensor, direction: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε̂ = ε_u + s·d, with d = ε_c − ε_u (or Perp-Neg's direction)."""
    return uncond + scale * direction


@dataclass(frozen=True)
class Prompt:
    text: str
    negative: str = ""
    view_dependent: bool = True  # append "front view" / "side view" / ... by camera
    perp_neg: bool = False  # the other views as Perp-Neg negatives (see `backend.guidance.perp_neg`)

    def for_view(self, view: str) -> str:
        return f"{self.text}, {view} view" if self.view_dependent else self.text


class Guidance(ABC):
    """A 2D diffusion prior (or an analytic stand-in for one)."""

    #: a diffusers scheduler: `alphas_cumprod`, `config.num_train_timesteps`, `add_noise`, `set_timesteps`, `step`
    scheduler = None
    device: torch.device = torch.device("cpu")
    #: size in pixels of the images `encode` expects (SD 1.x: 512) and of the latent it returns
    image_size: int = 512
    latent_size: int = 64
    #: probability per step of compositing over a random solid colour when the camera config leaves it unset.
    #: Stable Diffusion: 0. Its latent stage would see the colour only through the linear RGB→latent
    #: approximation (not what its VAE makes of a flat colour), and it needs no contrast to see a white
    #: object on white (Latent-NeRF trains the learned background on every step). Analytic priors: 0.5.
    random_background: float = 0.0
    #: whether Perp-Neg is on for view-dependent prompts unless a job says otherwise. Stable Diffusion: yes.
    #: Analytic priors: no (their captions carry no views, so it would reduce to plain CFG at twice the cost).
    perp_neg_by_default: bool = False
    #: whether the prediction depends on the prompt at all (an analytic single target's does not: its
    #: conditional and unconditional estimates are one and the same)
    prompt_matters: bool = True

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0 … T−1, float32 on the guidance's device."""
        cached = getattr(self, "_alphas_cumprod", None)
        if cached is None:
            cached = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
            self._alphas_cumprod = cached
        return cached

    def accelerate(self, speed: SpeedConfig) -> None:  # noqa: B027 - optional hook
        """Apply the speed switches that concern the prior (resolved `SpeedConfig`); called once per job."""

    def prepare(self, prompt: Prompt) -> None:  # noqa: B027 - optional hook
        """Called once per job before the first step: precompute what depends only on the prompt."""

    @abstractmethod
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras) -> NoisePrediction:
        """The raw parts of ε̂(z_t; y, t) for latents z_t [B, 4, h, w] at timesteps t. Never differentiated."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] → latents [B, 4, h, w], differentiable."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 4, h, w] → RGB [B, 3, H, W] in [0, 1], differentiable."""

    def describe(self) -> str:
        return type(self).__name__

    def trainable_denoiser(self, rank: int) -> torch.nn.Module | None:
        """A trainable ε_φ(z_t, t, c, y) of the scene's renders (VSD's second model) adapted from this prior's own
        network, called as `model(z_t, t, prompt, cameras, keep_camera)` → ε [B, 4, h, w]; `rank` is a LoRA's.
        None (the default) for a prior with no network to adapt: VSD then trains a small one from zero."""
        return None

    def set_frame(self, frame: Frame) -> None:  # noqa: B027 - optional hook
        """Where the task placed the asset (its unit volume in world space); a prior that renders a known
        answer (an analytic target) places that answer the same way. Called once per job, before `prepare`."""

    def suggested_frame(self) -> Frame | None:
        """Where the asset should sit when no sketch defines it (an analytic target knows)."""
        return None


def v_to_epsilon(v: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Convert a v-prediction into a noise prediction: ε = √ᾱ·v + √(1−ᾱ)·z_t."""
    a = alpha_bar.reshape(-1, *([1] * (z_t.dim() - 1)))
    return a.sqrt() * v + (1 - a).sqrt() * z_t
