"""Orbit cameras around the origin, DreamFusion-style random sampling and view-dependent prompts.

World frame: right-handed, z up (Blender's). Cameras follow the OpenGL convention: they look down their
local −z axis with +y up. Azimuth 0° is the front (camera on −y looking towards +y, like Blender's front
view), 90° the object's right side; elevation is measured up from the horizontal plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from backend.errors import ConfigError
from backend.transfer import to_device

if TYPE_CHECKING:
    from backend.shading import Light


@dataclass
class CameraConfig:
    """Ranges sampled uniformly per step (Latent-NeRF / DreamFusion defaults)."""

    radius_range: tuple[float, float] = (1.0, 1.5)
    fov_range: tuple[float, float] = (40.0, 70.0)  # vertical field of view, degrees
    elevation_range: tuple[float, float] = (-10.0, 90.0)  # degrees (DreamFusion: up to straight overhead)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)  # degrees
    # the view-dependent prompts' sectors (Latent-NeRF's angle_front and angle_overhead), carried by every
    # camera batch the sampler draws
    front_angle: float = 70.0  # width of the "front" and "back" sectors, degrees
    overhead_angle: float = 30.0  # elevations above 90° − this are "overhead", below −90° + this "bottom"
    # probability per step that the render and the prior's answer are both composited over a random solid
    # colour (one per camera) instead of the learned background; unset: the prior's own default
    random_background: float | None = None

    def validate(self) -> None:
        check_view_ranges("camera", self.radius_range, self.fov_range, self.elevation_range)
        check_range("camera.azimuth_range", self.azimuth_range)
        if not (0.0 < self.front_angle < 180.0 and 0.0 <= self.overhead_angle <= 90.0):
            raise ConfigError(f"camera.front_angle must be in (0, 180) and camera.overhead_angle in [0, 90] degrees, "
                              f"got {self.front_angle} and {self.overhead_angle}", "Latent-NeRF's: 70 and 30")
        if self.random_background is not None and not 0.0 <= self.random_background <= 1.0:
            raise ConfigError(f"camera.random_background is a probability in [0, 1], got {self.random_background}")


def check_range(name: str, value: tuple[float, float]) -> None:
    lo, hi = value
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"{name} = {(lo, hi)} is not a finite (low, high) range")


def check_view_ranges(where: str, radius_range: tuple[float, float], fov_range: tuple[float, float],
                      elevation_range: tuple[float, float]) -> None:
    """Refuse camera ranges that are not (low, high) pairs, or distances, fields of view or elevations that
    no camera can have; `where` names the table they are set in ("camera", "mesh")."""
    for name, value in (("radius_range", radius_range), ("fov_range", fov_range),
                        ("elevation_range", elevation_range)):
        check_range(f"{where}.{name}", value)
    if radius_range[0] <= 0:
        raise ConfigError(f"{where}.radius_range must be positive", "cameras orbit at a distance > 0")
    if not (fov_range[0] > 0 and fov_range[1] < 180):
        raise ConfigError(f"{where}.fov_range must lie inside (0, 180) degrees")
    if not (elevation_range[0] >= -90 and elevation_range[1] <= 90):
        raise ConfigError(f"{where}.elevation_range must lie inside [-90, 90] degrees")


@dataclass
class Cameras:
    """A batch of pinhole cameras looking at the origin."""

    c2w: torch.Tensor  # [B, 4, 4] camera-to-world
    fov: torch.Tensor  # [B] vertical field of view, radians
    elevation: torch.Tensor  # [B] degrees
    azimuth: torch.Tensor  # [B] degrees, in [-180, 180)
    radius: torch.Tensor  # [B]
    # what the step's render and the prior's own answer share besides the view (None: not used this step)
    background: torch.Tensor | None = None  # [B, 3] a solid RGB colour both are composited over
    light: Light | None = None  # DreamFusion's point light, one per camera
    shading: str = "albedo"  # render mode of RGB renders this step: one of backend.shading.MODES
    front_angle: float = 70.0  # the view prompts' sectors (`CameraConfig`), degrees
    overhead_angle: float = 30.0

    def take(self, index: torch.Tensor) -> Cameras:
        """The cameras at `index` [K], with their backgrounds and lights."""
        index = index.to(self.device)
        return replace(self, c2w=self.c2w[index], fov=self.fov[index], elevation=self.elevation[index],
                       azimuth=self.azimuth[index], radius=self.radius[index],
                       background=None if self.background is None else self.background[index],
                       light=None if self.light is None else self.light.take(index))

    @property
    def position(self) -> torch.Tensor:
        """Camera centres [B, 3]."""
        return self.c2w[:, :3, 3]

    @property
    def batch(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @staticmethod
    def orbit(
        elevation: torch.Tensor | float,
        azimuth: torch.Tensor | float,
        radius: torch.Tensor | float,
        fov: torch.Tensor | float,
        device: torch.device | str = "cpu",
    ) -> Cameras:
        """Cameras on a sphere around the origin; angles in degrees."""
        el, az, r, fv = (to_device(torch.as_tensor(v, dtype=torch.float32), device).reshape(-1)
                         for v in (elevation, azimuth, radius, fov))
        el, az, r, fv = torch.broadcast_tensors(el, az, r, fv)
        e, a = torch.deg2rad(el), torch.deg2rad(az)
        position = torch.stack([torch.cos(e) * torch.sin(a), -torch.cos(e) * torch.cos(a), torch.sin(e)], -1)
        position = position * r[:, None]
        back = position / r[:, None]  # camera +z points away from the target
        right = torch.linalg.cross(_axis(back, 2), back)  # world up × backwards
        # straight above or below: any horizontal right vector will do
        degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
        right = torch.where(degenerate, _axis(back, 0), right)
        right = right / right.norm(dim=-1, keepdim=True)
        up = torch.linalg.cross(back, right)
        c2w = torch.eye(4, device=device).repeat(len(r), 1, 1)
        c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, position
        wrapped = torch.remainder(az + 180.0, 360.0) - 180.0
        return Cameras(c2w=c2w, fov=torch.deg2rad(fv), elevation=el, azimuth=wrapped, radius=r)

    def focal(self, size: int) -> torch.Tensor:
        """Focal length in pixels for a square image of `size` pixels."""
        return size / (2 * torch.tan(self.fov / 2))

    def rays(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions [B, size, size, 3] through pixel centres (row 0 at the top)."""
        pix = torch.arange(size, device=self.device, dtype=torch.float32) + 0.5 - size / 2
        f = self.focal(size)[:, None, None]
        y, x = torch.meshgrid(-pix, pix, indexing="ij")
        d_cam = torch.stack([x.expand(self.batch, -1, -1) / f, y.expand(self.batch, -1, -1) / f,
                             -torch.ones(self.batch, size, size, device=self.device)], -1)
        d = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.c2w[:, None, None, :3, 3].expand_as(d)
        return o, d

    def mvp(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """OpenGL model-view-projection matrices [B, 4, 4] (square images)."""
        w2c = torch.linalg.inv_ex(self.c2w).inverse  # inv_ex: no singularity check, which would sync
        t = 1.0 / torch.tan(self.fov / 2)
        proj = torch.zeros(self.batch, 4, 4, device=self.device)
        proj[:, 0, 0] = t
        proj[:, 1, 1] = t
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2 * far * near / (far - near)
        proj[:, 3, 2] = -1.0
        return proj @ w2c

    def view_indices(self, front_angle: float | None = None, overhead_angle: float | None = None) -> torch.Tensor:
        """Index into `VIEWS` per camera [B] (DreamFusion's view-dependent prompts), computed on the device.

        The sectors are the batch's own (`front_angle`, `overhead_angle`) unless given. Cameras as far below
        the horizon as "overhead" ones are above it are "bottom" views.
        """
        front_angle = self.front_angle if front_angle is None else front_angle
        overhead_angle = self.overhead_angle if overhead_angle is None else overhead_angle
        az = self.azimuth.abs()
        index = torch.where(az < front_angle / 2, 0, torch.where(az > 180.0 - front_angle / 2, 2, 1))
        index = torch.where(self.elevation <= overhead_angle - 90.0, 4, index)
        return torch.where(self.elevation >= 90.0 - overhead_angle, 3, index)

    def view_labels(self, front_angle: float | None = None, overhead_angle: float | None = None) -> list[str]:
        """DreamFusion's view-dependent prompt suffixes: front, side, back, overhead or bottom."""
        return [VIEWS[i] for i in self.view_indices(front_angle, overhead_angle).tolist()]


def _axis(like: torch.Tensor, k: int) -> torch.Tensor:
    """Unit vectors along world axis `k` shaped like `like` [B, 3], made on its device (no host copy)."""
    axis = torch.zeros_like(like)
    axis[:, k] = 1.0
    return axis


VIEWS = ("front", "side", "back", "overhead", "bottom")  # in `Cameras.view_indices` order


class CameraSampler:
    """Draws random orbit cameras from a `CameraConfig` with a seeded generator.

    With probability `config.random_background` (else `default_background`) a batch also carries random
    solid background colours, one per camera, uniform in RGB (background augmentation).
    """

    def __init__(self, config: CameraConfig, generator: torch.Generator, device: torch.device | str,
                 default_background: float = 0.0) -> None:
        config.validate()
        self.config = config
        self.generator = generator
        self.device = device
        self.background_probability = (default_background if config.random_background is None
                                       else config.random_background)

    def _background(self, batch: int) -> torch.Tensor | None:
        # no draw at all when off, so a run without augmentation keeps its random stream
        if self.background_probability <= 0:
            return None
        colors = torch.rand(batch, 3, generator=self.generator)
        if float(torch.rand((), generator=self.generator)) >= self.background_probability:
            return None
        return to_device(colors, self.device)

    def _uniform(self, lo: float, hi: float, n: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def sample(self, batch: int = 1) -> Cameras:
        c = self.config
        # elevation uniform on the sphere's area, not in angle, so overhead views are not oversampled
        s_lo, s_hi = (math.sin(math.radians(v)) for v in c.elevation_range)
        elevation = torch.rad2deg(torch.asin(self._uniform(s_lo, s_hi, batch)))
        cameras = Cameras.orbit(
            elevation=elevation,
            azimuth=self._uniform(*c.azimuth_range, batch),
            radius=self._uniform(*c.radius_range, batch),
            fov=self._uniform(*c.fov_range, batch),
            device=self.device,
        )
        return replace(cameras, background=self._background(batch), front_angle=c.front_angle,
                       overhead_angle=c.overhead_angle)
