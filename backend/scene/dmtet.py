"""Magic3D's second stage: a deformable tetrahedral grid whose zero level set is the asset's surface.

Each grid vertex has an SDF value s_i and an offset Δv_i (bounded to half a cell, so tetrahedra never
invert); differentiable marching tetrahedra extracts the surface, which is rasterised at up to 512² and
coloured by the NeRF's colour field at the surface points (the field stays the mesh's volumetric
texture). s starts as the signed distance to the NeRF's own iso-surface (its largest component), so the
hand-over keeps the shape and drops floaters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import igl
import numpy as np
import torch
from torch import nn

from backend.cameras import Cameras, check_view_ranges
from backend.errors import ConfigError
from backend.isosurface import extract_mesh
from backend.mesh import MAX_FACES
from backend.render.marching_tets import TetGrid, marching_tets
from backend.render.surface import antialias, rasterize_surface
from backend.scene.base import PREVIEW_CAMERA, SceneRender, to_preview
from backend.shading import shade

if TYPE_CHECKING:
    from backend.scene.nerf import LatentNeRF

ColorField = Callable[[torch.Tensor], torch.Tensor]  # unit-frame points [N, 3] → RGB [N, 3]
Background = Callable[[torch.Tensor], torch.Tensor]  # view directions [..., 3] → RGB [..., 3]


REFERENCE_RESOLUTION = 512  # the render size the references' mesh-stage weights are given for


@dataclass
class MeshStageConfig:
    """The mesh refinement stage (Magic3D): step count, render size, grid, its own timesteps and cameras, and
    loss weights. The defaults are Magic3D's refinement as stable-dreamfusion and threestudio's
    `magic3d-refine-sd` run it."""

    iters: int = 1000  # 0 skips the stage (the export then meshes the NeRF's density)
    resolution: int = 512  # rasterised render size, up to 512
    grid_resolution: int = 128  # tetrahedral grid cubes per axis over [−bound, bound]³
    lr_sdf: float = 1e-3
    lr_deform: float = 1e-3
    lr_color: float = 1e-3  # the NeRF's colour field; its hash table learns `grid_lr_scale` times faster
    # t ≤ 0.5 (Magic3D, both references): the surface is formed, the high-noise end would only add noise
    # to it. A uniform schedule draws from this range; HiFA's annealed one is clamped into it.
    t_min: float = 0.02
    t_max: float = 0.5
    # zoomed in on details (Magic3D raises the focal length): threestudio's refinement narrows the field of
    # view to 30–45° at the coarse stage's distance (ours: the latent stage's 1–1.5) and keeps −10…45°
    radius_range: tuple[float, float] = (1.0, 1.5)
    fov_range: tuple[float, float] = (30.0, 45.0)
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    # smoothing weights at 512² renders (the references' size); a smaller render scales them by its share of
    # 512²'s pixels when the guidance's loss is a sum over the latent (SDS, VSD), so the balance stays theirs
    lambda_normal: float = 1e4  # normal consistency along edges (threestudio's refinement: 10⁴)
    lambda_laplacian: float = 0.5  # uniform Laplacian smoothing of the surface vertices (stable-dreamfusion: 0.5)
    init_clamp: float = 3.0  # the initial SDF is clamped to ± this many cells

    def validate(self) -> None:
        if not isinstance(self.iters, int) or self.iters < 0:
            raise ConfigError(f"mesh.iters must be 0 (skip) or more, got {self.iters!r}")
        if not 16 <= self.resolution <= 512 or self.resolution % 8:
            raise ConfigError(f"mesh.resolution must be a multiple of 8 in [16, 512], got {self.resolution}")
        if not 8 <= self.grid_resolution <= 256:
            raise ConfigError(f"mesh.grid_resolution must be in [8, 256], got {self.grid_resolution}")
        for name in ("lr_sdf", "lr_deform", "lr_color", "init_clamp"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"mesh.{name} must be positive, got {getattr(self, name)}")
        if not (self.lambda_normal >= 0 and self.lambda_laplacian >= 0):
            raise ConfigError("mesh.lambda_normal and mesh.lambda_laplacian must be ≥ 0")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ConfigError(f"mesh timesteps need 0 ≤ mesh.t_min < mesh.t_max ≤ 1, got {self.t_min} and {self.t_max}",
                              "Magic3D's refinement: 0.02 and 0.5")
        check_view_ranges("mesh", self.radius_range, self.fov_range, self.elevation_range)


@dataclass
class MeshRender:
    image: torch.Tensor  # [B, 3, H, W] shaded RGB over the background, antialiased
    opacity: torch.Tensor  # [B, H, W] coverage (antialiased)
    vertices: torch.Tensor  # [N, 3] the extracted surface
    faces: torch.Tensor  # [F, 3]


class DMTet(nn.Module):
    """SDF values and offsets on a tetrahedral grid; `surface()` is the current mesh."""

    def __init__(self, grid_resolution: int, bound: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.resolution, self.bound, self._grid = int(grid_resolution), float(bound), None
        n = (self.resolution + 1) ** 3
        self.sdf = nn.Parameter(torch.ones(n, device=device))
        self.deform = nn.Parameter(torch.zeros(n, 3, device=device))
        # uint8, not bool: checkpoints travel as plain numeric arrays
        self.register_buffer("initialised", torch.zeros((), dtype=torch.uint8, device=device))

    @property
    def grid(self) -> TetGrid:
        """The tetrahedra, built when first needed: a job that never reaches its mesh stage never pays for them."""
        if self._grid is None:
            self._grid = TetGrid.build(self.resolution, self.bound, self.sdf.device)
        return self._grid

    def vertices(self) -> torch.Tensor:
        return self.grid.vertices + torch.tanh(self.deform) * (self.grid.cell / 2)

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices [N, 3] (differentiable) and faces [F, 3] of the zero level set."""
        return marching_tets(self.grid, self.vertices(), self.sdf)

    def init_from_density(self, density: Callable[[torch.Tensor], torch.Tensor], threshold: float,
                          clamp_cells: float = 3.0) -> None:
        """s = signed distance to the largest component of {density = threshold} (once; a resumed grid keeps
        its own values). Raises `InputError` when the density has no surface at that threshold."""
        if bool(self.initialised):
            return
        iso = extract_mesh(density, 2 * self.grid.resolution + 1, threshold, self.grid.bound, MAX_FACES,
                           self.sdf.device)
        points = self.grid.vertices.detach().cpu().double().numpy()
        s, *_ = igl.signed_distance(points, iso.vertices.astype(np.float64), iso.faces,
                                    sign_type=igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
        limit = clamp_cells * self.grid.cell
        with torch.no_grad():
            self.sdf.copy_(torch.as_tensor(s, dtype=torch.float32).clamp(-limit, limit))
            self.deform.zero_()
            self.initialised.fill_(1)

    def param_groups(self, config: MeshStageConfig) -> list[dict]:
        return [{"params": [self.sdf], "lr": config.lr_sdf}, {"params": [self.deform], "lr": config.lr_deform}]


def render_surface(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, size: int,
                   color: ColorField, background: Background, mode: str) -> MeshRender:
    """Shade the mesh with `color` at its surface points under the cameras' light, over the background."""
    surface = rasterize_surface(vertices, faces, cameras, size)
    _, d = cameras.rays(size)
    if cameras.background is not None:
        image = cameras.background[:, None, None, :].expand(-1, size, size, -1).clone()
    else:
        image = background(d)
    if surface.hit.any():
        points = surface.interpolate(vertices, faces)
        normals = surface.interpolate(vertex_normals(vertices, faces), faces)
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        albedo = color(points).clamp(0, 1) if mode != "textureless" else torch.ones_like(points)
        lit = shade(albedo, normals, points, cameras.light, mode, surface.batch_index)
        image = image.index_put((surface.hit,), lit)
    rgba = torch.cat([image, surface.hit[..., None].to(image)], -1)
    rgba = antialias(rgba, surface, faces)
    return MeshRender(rgba[..., :3].permute(0, 3, 1, 2), rgba[..., 3], vertices, faces)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals [V, 3] (unnormalised), differentiable."""
    p = vertices[faces]
    n = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(0, faces[:, k], n)
    return out


def mesh_edges(faces: torch.Tensor, n: int) -> torch.Tensor:
    """Each edge of a triangle mesh of `n` vertices once [E, 2], lower index first."""
    edges = torch.sort(faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), -1).values
    key = torch.unique(edges[:, 0] * n + edges[:, 1])  # one number per edge: a 1-D unique is a plain sort
    return torch.stack([key // n, key % n], -1)


def normal_consistency(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cos between the unit vertex normals at the two ends of each edge (threestudio's definition, so
    its weight carries over): low on a smooth surface, high on a bumpy or folded one."""
    if len(faces) == 0:
        return vertices.sum() * 0
    normals = vertex_normals(vertices, faces)
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    edges = mesh_edges(faces, len(vertices))
    return (1 - (normals[edges[:, 0]] * normals[edges[:, 1]]).sum(-1)).mean()


def laplacian_smoothness(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over vertices of ‖Σ_neighbours (v − v_j)‖, the uniform Laplacian's magnitude (stable-dreamfusion's
    and threestudio's definition, so their weights carry over), in the unit frame's lengths."""
    if len(faces) == 0:
        return vertices.sum() * 0
    edges = mesh_edges(faces, len(vertices))
    edges = torch.cat([edges, edges.flip(-1)])
    delta = vertices[edges[:, 0]] - vertices[edges[:, 1]]
    lap = torch.zeros_like(vertices).index_add(0, edges[:, 0], delta)
    used = torch.zeros(len(vertices), dtype=torch.bool, device=vertices.device)
    used[edges[:, 0]] = True
    return (lap[used].pow(2).sum(-1) + 1e-20).sqrt().mean()  # + ε: a finite gradient where the sum is 0


class DMTetScene:
    """The DMTet surface coloured by the NeRF's colour field, rasterised with gradients to the geometry."""

    def __init__(self, dmtet: DMTet, nerf: LatentNeRF) -> None:
        self.dmtet, self.nerf = dmtet, nerf

    def color(self, points: torch.Tensor) -> torch.Tensor:
        return self.nerf.decoder(self.nerf.field(points)[1])

    def render(self, cameras: Cameras, size: int, mode: str) -> SceneRender:
        vertices, faces = self.dmtet.surface()
        out = render_surface(vertices, faces, cameras, size, self.color,
                             lambda directions: self.nerf.background(directions, rgb=True), mode)
        return SceneRender(out.image, latent=False, opacity=out.opacity, surface=(out.vertices, out.faces))

    def preview(self) -> np.ndarray:
        cams = Cameras.orbit(**PREVIEW_CAMERA, device=self.dmtet.sdf.device)
        with torch.no_grad():
            out = self.render(cams, 128, "albedo")
        return to_preview(out.image, False)
