"""Perp-Neg (Armandpour et al. 2023): view prompts whose negatives cannot undo the positive.

DreamFusion's view suffixes ("front/side/back view") leave the prior free to draw a face on the back: "back
view of a dog" still looks like a dog's face to a 2D model. Perp-Neg adds the other views as negative
prompts, but only the part of each negative direction perpendicular to the positive one, so a negative never
removes what the positive asks for:

    e_pos = ε(y_pos) − ε_u,   e_i = ε(y_i) − ε_u,
    ε̂ = ε_u + s·(e_pos + Σ_i w_i·(e_i − (⟨e_i, e_pos⟩/‖e_pos‖²)·e_pos))

with inner products over each sample's whole latent. By azimuth a (degrees, 0 = front):

- |a| < 90: r = 1 − |a|/90; y_pos = r·front + (1 − r)·side (text embeddings); negatives front and side with
  w = −f_fs(r), −f_sf(1 − r);
- else: r = 2 − |a|/90; y_pos = r·side + (1 − r)·back; negatives side and front with w = −f_sb(r), −f_fsb(r);
- overhead and bottom views: their own prompt, no negatives (plain CFG);

f(r) = α·exp(−β·r) + γ, with the coefficients below (the Perp-Neg defaults threestudio ships: f_fs(1) ≈ 0, so a
pure front view has no front negative). One U-Net call per step evaluates ε_u, ε(y_pos) and both negatives.
"""

from __future__ import annotations

import torch

from backend.cameras import VIEWS, Cameras

FRONT, SIDE, BACK = (VIEWS.index(v) for v in ("front", "side", "back"))
NEGATIVES = 2  # negative prompts per camera
# (α, β, γ) of f(r) = α·exp(−β·r) + γ
F_FS = (4.0, 0.5, -2.426)
F_SF = (4.0, 0.5, -2.426)
F_SB = (1.0, 0.5, -0.606)
F_FSB = (1.0, 0.5, 0.967)


def decay(coefficients: tuple[float, float, float], r: torch.Tensor) -> torch.Tensor:
    a, b, c = coefficients
    return a * torch.exp(-b * r) + c


def view_mix(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per camera: the positive prompt as a blend of two views (indices [B, 2] into `VIEWS`, weights [B, 2])
    and the negatives (indices [B, 2], weights [B, 2])."""
    az = cameras.azimuth.abs().float()
    front = az < 90.0
    r = torch.where(front, 1.0 - az / 90.0, 2.0 - az / 90.0)

    def pair(a: int | torch.Tensor, b: int | torch.Tensor) -> torch.Tensor:
        a, b = (torch.as_tensor(v, device=az.device).expand_as(az) for v in (a, b))
        return torch.stack([a, b], -1)

    pos_idx = torch.where(front[:, None], pair(FRONT, SIDE), pair(SIDE, BACK))
    pos_w = torch.stack([r, 1.0 - r], -1)
    neg_idx = torch.where(front[:, None], pair(FRONT, SIDE), pair(SIDE, FRONT))
    neg_w = torch.where(front[:, None], torch.stack([-decay(F_FS, r), -decay(F_SF, 1.0 - r)], -1),
                        torch.stack([-decay(F_SB, r), -decay(F_FSB, r)], -1))
    # overhead and bottom views keep their own prompt and no negatives
    views = cameras.view_indices()
    vertical = (views >= VIEWS.index("overhead"))[:, None]
    pos_idx = torch.where(vertical, views[:, None].expand(-1, 2), pos_idx)
    pos_w = torch.where(vertical, torch.tensor([1.0, 0.0], device=az.device), pos_w)
    neg_w = torch.where(vertical, torch.zeros_like(neg_w), neg_w)
    return pos_idx, pos_w, neg_idx, neg_w


def perpendicular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of each sample of x [B, ...] perpendicular to the same sample of y."""
    dims = tuple(range(1, x.dim()))
    dot = (x * y).sum(dims, keepdim=True)
    return x - dot / (y * y).sum(dims, keepdim=True).clamp_min(1e-12) * y


def direction(eps_uncond: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor, weights: torch.Tensor
              ) -> torch.Tensor:
    """Perp-Neg's guidance direction e_pos + Σ_i w_i·perp(e_i, e_pos) from ε_u, ε(y_pos) [B, ...], the
    negatives' ε [N, B, ...] and their weights [B, N]; classifier-free guidance scales it
    (`backend.guidance.base.classifier_free`), giving the ε̂ of the formula above."""
    e_pos = eps_pos - eps_uncond
    shape = (-1,) + (1,) * (e_pos.dim() - 1)
    pushed = sum(weights[:, i].reshape(shape) * perpendicular(eps_neg[i] - eps_uncond, e_pos)
                 for i in range(eps_neg.shape[0]))
    return e_pos + pushed

