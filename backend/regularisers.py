"""Extra losses on a render, each a small pure function."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparsity(opacity: torch.Tensor) -> torch.Tensor:
    """Latent-NeRF's sparsity loss: binary entropy of each pixel's object/background blend weight.

    Low when every pixel is clearly object or clearly background, which removes floating haze.
    """
    a = opacity.clamp(1e-5, 1 - 1e-5)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()


def z_variance(distances: torch.Tensor, weights: torch.Tensor, min_opacity: float = 0.5) -> torch.Tensor:
    """HiFA's z-variance: the variance of sample distance along each ray under its normalised weights,
    Σ_i (z_i − μ_r)²·w_i/Σw, averaged over rays [R, S] (rays with Σw ≤ `min_opacity` count as 0).

    Low when each ray's weight sits at one depth: a crisp surface instead of a semi-transparent haze.
    """
    total = weights.sum(-1, keepdim=True)
    p = weights / total.clamp(min=1e-5)
    mean = (p * distances).sum(-1, keepdim=True)
    variance = (p * (distances - mean) ** 2).sum(-1)
    return (variance * (total[:, 0] > min_opacity).detach()).mean()


def ramp(step: int, total: int, fraction: float = 0.5) -> float:
    """0 → 1 linearly over the first `fraction` of the job, then 1 (HiFA's z-variance weight)."""
    return min(1.0, step / max(fraction * total, 1e-9))


def scale_invariant_disparity(disparity: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """HiFA's depth loss: ‖d′ − d*‖² with d′ = ⟨d, d*⟩·d/‖d‖², over the pixels in `mask`.

    Monocular disparity is only known up to scale and shift, so both are centred first (the target also
    scaled to unit spread, as HiFA's reference does); the optimal scale is then solved, not learnt.
    Images [B, H, W]; 0 where no pixel is in the mask.
    """
    losses = []
    for d, t, m in zip(disparity, target, mask, strict=True):
        if int(m.sum()) < 2:
            losses.append(d.sum() * 0)
            continue
        t = t[m].detach()
        t = (t - t.mean()) / t.std().clamp(min=1e-6)
        d = d[m] - d[m].mean()
        fitted = (d * t).sum() / (d * d).sum().clamp(min=1e-12) * d
        losses.append(((fitted - t) ** 2).mean())
    return torch.stack(losses).mean()


def orientation(normals: torch.Tensor, directions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DreamFusion's orientation loss (from Ref-NeRF): Σ_i w_i·max(0, n_i·d)² per ray, averaged over rays.

    Normals [R, S, 3] facing away from the camera along the ray direction d [R, 3] are penalised, so the
    visible surface cannot be a back face painted from behind. The weights only say where the surface is
    (no gradient through them, as DreamFusion's and the reference implementations' loss): otherwise the
    loss could lower itself by removing the density there instead of turning its normals.
    """
    facing = (normals * directions[:, None]).sum(-1).clamp(min=0)
    return (weights.detach() * facing**2).sum(-1).mean()


def texture_smoothness(texture: torch.Tensor, right: torch.Tensor, down: torch.Tensor, edge: float) -> torch.Tensor:
    """Σ of a Huber penalty on differences d between neighbouring texels of `texture` [C, H, W] that lie in
    one chart (`right` [H, W−1], `down` [H−1, W]; see `chart_neighbours`): d² below `edge`, linear above.

    Renders see a texture through pixel footprints several texels wide, so detail finer than a footprint
    is invisible to every view and keeps whatever the optimiser's transients left there: speckle in flat
    regions. This weak prior pulls that detail toward its neighbours; above `edge` its pull stops growing,
    so a colour edge the views do see stays as sharp as they make it.
    """
    def huber(d: torch.Tensor) -> torch.Tensor:
        return 2 * edge * F.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=edge)

    dx = texture[:, :, 1:] - texture[:, :, :-1]
    dy = texture[:, 1:] - texture[:, :-1]
    return (huber(dx) * right).sum() + (huber(dy) * down).sum()
