"""Volume rendering of a density + feature field inside a bounding sphere.

Samples are stratified along each ray. With `importance_samples`, a coarse pass (no gradient) first
finds where the weight lies, the coarse weights are smoothed with a small kernel (HiFA: without it,
samples collapse onto the few bins that happened to catch the surface and textures flicker between
steps), and that many extra samples are drawn from them by inverse CDF; the merged, sorted samples
are then rendered with gradients.

With a `Shader` (DreamFusion's shading in RGB stages), each sample also gets a unit normal from the
density's gradient (forward finite differences, so gradients reach the density through the shading) and
its colour is shaded before compositing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.errors import ConfigError
from backend.render.occupancy import OccupancyConfig, OccupancyGrid
from backend.transfer import to_device

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points → (density, features)
# (colours [N, C], unit normals [N, 3], points [N, 3], camera index [N]) → shaded colours [N, C]
Shade = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# smoothing kernels for importance sampling: boxcar (HiFA's default) and the piecewise-linear pdf
# through the bin centres (each bin keeps 3/4 of its mass and gives 1/8 to each neighbour)
KERNELS = {"boxcar": (1 / 3, 1 / 3, 1 / 3), "trapezoidal": (1 / 8, 3 / 4, 1 / 8)}


@dataclass
class VolumeConfig:
    samples: int = 64  # stratified samples per ray
    min_near: float = 0.1
    importance_samples: int = 0  # extra samples per ray from the smoothed coarse weights (0: off)
    kernel: str = "boxcar"  # smoothing of the coarse weights: one of KERNELS

    def validate(self) -> None:
        if int(self.samples) < 2:
            raise ConfigError("render.samples must be at least 2")
        if not 0.0 <= self.min_near < 1.0:  # float32 distances along rays; cameras orbit at 1–1.5 by default
            raise ConfigError(f"render.min_near must be in [0, 1), got {self.min_near}", "Latent-NeRF's: 0.1")
        if int(self.importance_samples) < 0:
            raise ConfigError(f"render.importance_samples must be 0 (off) or more, got {self.importance_samples}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"unknown render.kernel {self.kernel!r}", f"choose one of {', '.join(KERNELS)}")


@dataclass
class VolumeRender:
    image: torch.Tensor  # [B, C, H, W] features composited over the background
    opacity: torch.Tensor  # [B, H, W] Σ w: how much of each pixel is object
    depth: torch.Tensor  # [B, H, W] expected distance along the ray
    points: torch.Tensor  # [R, S, 3] sample positions (R rays; S counts importance samples too)
    sigmas: torch.Tensor  # [R, S] densities there
    weights: torch.Tensor  # [R, S] compositing weights
    t_mid: torch.Tensor  # [R, S] sample distances, increasing along each ray
    directions: torch.Tensor | None = None  # [R, 3] unit ray directions
    normals: torch.Tensor | None = None  # [R, S, 3] unit normals −∇σ/‖∇σ‖, when a shader asked for them


@dataclass
class Shader:
    """What a shaded render needs: the density alone (for its gradient) and how to shade a sample."""

    density: Callable[[torch.Tensor], torch.Tensor]  # points [N, 3] → density [N]
    shade: Shade | None  # None: normals only (albedo renders that still pay the orientation loss)
    eps: float = 1e-2  # finite-difference step, in the unit frame


def density_normals(density: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, sigma: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """Unit normals −∇σ/‖∇σ‖ [N, 3] at `points` [N, 3] with densities `sigma` [N], by forward differences."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    shifted = density((points[:, None] + offsets).reshape(-1, 3)).view(-1, 3)
    grad = (shifted - sigma[:, None]) / eps
    return -grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def intersect_sphere(o: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of unit rays with the origin-centred sphere; exit ≤ entry means a miss."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    near, far = -b - root, -b + root
    miss = disc <= 0
    return near, torch.where(miss, near, far)


def composite(sigma: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Compositing weights w_i = α_i · Π_{j<i}(1 − α_j) with α = 1 − exp(−σδ)."""
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], -1), -1)[:, :-1]
    return alpha * trans


def smooth_weights(weights: torch.Tensor, kernel: str = "boxcar") -> torch.Tensor:
    """Kernel-smoothed per-ray weights [R, S], each ray keeping its total weight.

    Every bin spreads its weight over the kernel taps that land on the ray, renormalised to them, so
    nothing wraps from one end of the ray to the other and nothing is lost off its ends.
    """
    k = torch.tensor(KERNELS[kernel], dtype=weights.dtype, device=weights.device).view(1, 1, -1)
    pad = k.shape[-1] // 2
    reach = F.conv1d(torch.ones_like(weights[:1, None]), k, padding=pad)[:, 0]  # [1, S] taps on the ray
    return F.conv1d((weights / reach)[:, None], k.flip(-1), padding=pad)[:, 0]


def sample_pdf(edges: torch.Tensor, weights: torch.Tensor, n: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` distances per ray [R, n] drawn by inverse CDF from piecewise-constant weights [R, S] on bins
    with `edges` [R, S+1]; random with `generator`, else evenly spaced quantiles (deterministic)."""
    pdf = weights + 1e-5  # an empty ray samples uniformly
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf / cdf[:, -1:]], -1).contiguous()
    if generator is not None:
        u = to_device(torch.rand(weights.shape[0], n, generator=generator), weights)
    else:
        u = ((torch.arange(n, device=weights.device, dtype=weights.dtype) + 0.5) / n).expand(weights.shape[0], n)
    hi = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, weights.shape[1])
    lo = hi - 1
    c0, c1 = cdf.gather(1, lo), cdf.gather(1, hi)
    e0, e1 = edges.gather(1, lo), edges.gather(1, hi)
    frac = ((u - c0) / (c1 - c0).clamp(min=1e-12)).clamp(0, 1)
    return e0 + frac * (e1 - e0)


class VolumeRenderer:
    def __init__(self, config: VolumeConfig, bound: float, occupancy: OccupancyConfig | None = None) -> None:
        config.validate()
        self.config = config
        self.bound = bound
        # empty-space skipping (see backend.render.occupancy), when a resolved config switches it on
        self.occupancy = OccupancyGrid(occupancy, bound) if occupancy and occupancy.enabled == "on" else None

    def render(
        self,
        field: Field,
        background: Callable[[torch.Tensor], torch.Tensor],
        origins: torch.Tensor,
        directions: torch.Tensor,
        generator: torch.Generator | None = None,
        shader: Shader | None = None,
    ) -> VolumeRender:
        """Render rays [B, H, W, 3]; `generator` set means stratified jitter (training), None means midpoints."""
        b, h, w, _ = origins.shape
        o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        if self.occupancy is not None:
            if generator is not None:
                self.occupancy.train_render(field, o.device)
            field = self.occupancy.wrap(field)
        near, far = intersect_sphere(o, d, self.bound)
        near = near.clamp(min=self.config.min_near)
        far = torch.maximum(far, near)
        s = self.config.samples
        u = torch.linspace(0, 1, s + 1, device=o.device)
        edges = near[:, None] + (far - near)[:, None] * u  # [R, S+1] bin edges
        if generator is not None:
            jitter = to_device(torch.rand(o.shape[0], s, generator=generator), o.device)
        else:
            jitter = torch.full((o.shape[0], s), 0.5, device=o.device)
        t_mid = edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * jitter
        deltas = edges[:, 1:] - edges[:, :-1]
        points = o[:, None] + d[:, None] * t_mid[..., None]
        sigma, feats = field(points.reshape(-1, 3))
        sigma, feats = sigma.view(t_mid.shape), feats.view(*t_mid.shape, -1)
        if self.config.importance_samples:
            t_mid, deltas, points, sigma, feats = self._importance(field, o, d, edges, t_mid, deltas, points, sigma,
                                                                   feats, generator)
        weights = composite(sigma, deltas)
        opacity = weights.sum(-1)
        normals = None
        if shader is not None:
            flat = points.reshape(-1, 3)
            normals = density_normals(shader.density, flat, sigma.reshape(-1), shader.eps)
            if shader.shade is not None:
                camera = torch.arange(b, device=o.device).repeat_interleave(h * w * t_mid.shape[1])
                shaded = shader.shade(feats.reshape(-1, feats.shape[-1]), normals, flat, camera)
                feats = shaded.view(*t_mid.shape, -1)
            normals = normals.view(*t_mid.shape, 3)
        fg = (weights[..., None] * feats).sum(1)
        bg = background(d)
        image = fg + (1 - opacity)[:, None] * bg
        depth = (weights * t_mid).sum(-1)
        return VolumeRender(
            image=image.view(b, h, w, -1).permute(0, 3, 1, 2),
            opacity=opacity.view(b, h, w),
            depth=depth.view(b, h, w),
            points=points,
            sigmas=sigma,
            weights=weights,
            t_mid=t_mid,
            directions=d,
            normals=normals,
        )

    def _importance(self, field: Field, o: torch.Tensor, d: torch.Tensor, edges: torch.Tensor, t_mid: torch.Tensor,
                    deltas: torch.Tensor, points: torch.Tensor, sigma: torch.Tensor, feats: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """Coarse samples merged with importance samples drawn from their weights: sorted distances, the
        length each covers, and the points, densities and features there.

        The coarse samples' field values (and their graph) are reused as they are, so the field only
        evaluates the importance samples: the same render as evaluating every merged sample again.
        """
        with torch.no_grad():
            weights = composite(sigma.detach(), deltas)
            extra = sample_pdf(edges, smooth_weights(weights, self.config.kernel),
                               int(self.config.importance_samples), generator)
        extra_points = o[:, None] + d[:, None] * extra[..., None]
        extra_sigma, extra_feats = field(extra_points.reshape(-1, 3))
        t_all, order = torch.sort(torch.cat([t_mid, extra], -1), -1)
        # each sample stands for the stretch up to half-way to its neighbours, as a stratified one for its bin
        bounds = torch.cat([edges[:, :1], (t_all[:, 1:] + t_all[:, :-1]) / 2, edges[:, -1:]], -1)

        def merged(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
            both = torch.cat([coarse, fine.view(*extra.shape, *coarse.shape[2:])], 1)
            return both.gather(1, order.view(*order.shape, *[1] * (both.dim() - 2)).expand_as(both))

        return (t_all, bounds[:, 1:] - bounds[:, :-1], merged(points, extra_points), merged(sigma, extra_sigma),
                merged(feats, extra_feats))
