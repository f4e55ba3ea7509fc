"""Latent-Paint: texture an artist's finished mesh from a prompt, without touching its geometry.

The mesh keeps its UVs when they are usable, else xatlas unwraps it (vertices split along seams, with a
map back to the originals). A 4-channel latent texture is optimised by score distillation from 64×64
rasterised views, decoded once through the guidance's VAE into the final RGB texture, and optionally
fine-tuned in RGB through the encoder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from backend.cameras import CameraConfig, Cameras, CameraSampler
from backend.errors import ConfigError, InputError
from backend.events import EventSink, ignore
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.progress import ExportProgress, estimate_texture_export_s
from backend.export.unwrap import default_padding
from backend.guidance.base import Guidance
from backend.latent import resize
from backend.loop import final_anneal
from backend.mesh import Frame, Mesh, validate_mesh
from backend.objectives.config import build_objective
from backend.render.atlas import atlas_raster, fill_empty
from backend.render.mesh_render import FILTERS
from backend.scene.base import PREVIEW_CAMERA
from backend.scene.latent_texture import LatentTexture
from backend.shading import LightConfig
from backend.speed import SpeedConfig
from backend.tasks.appearance import Appearance
from backend.tasks.distill import (
    DistillConfig,
    DistillJob,
    DistillStep,
    SceneRender,
    distill_stage,
    glb_output,
    run_job,
    set_up,
    to_preview,
)
from backend.tasks.face_selection import Selection, select_faces
from backend.tasks.paint_surface import Surface, paint_surface, plan_texture

VAE_FACTOR = 8  # texels of the final texture per latent texel
# the least gutter between the charts of an atlas made for painting: one latent texel, so no latent texel
# (nor a bilinear lookup of one chart) reaches into another chart, whose colour it would have to be too
PAINT_PADDING = VAE_FACTOR
# the latent stage's Adam betas: a texel's gradient scale swings by 100× with the timestep, and β2 = 0.999
# remembers the largest for a thousand steps, which stalls the rarely seen texels (undersides)
PAINT_BETAS = (0.9, 0.99)


@dataclass
class PaintConfig(DistillConfig):
    texture_size: int = 1024  # final RGB texture; the latent texture is texture_size / 8 (default 128)
    iters: int = 5000
    lr: float = 1e-2  # Latent-Paint's
    finetune_iters: int = 0  # RGB fine-tuning through the encoder after decoding (0: off)
    finetune_resolution: int = 512
    finetune_lr: float = 1e-3  # RGB texels in [0, 1]: the latent rate would jitter them by levels a step
    # the background MLP's: a network's rate (generate's MLPs learn at 1e-3), not the texels'; at theirs its
    # colour jitters by levels, and the texels along silhouettes take up the difference
    background_lr: float = 1e-3
    # the last fraction of each stage anneals its rate to 1% (cosine): a flat colour comes out flat, not
    # jittered by Adam's last steps
    lr_anneal: float = 0.3
    finetune_restart_schedules: bool = False  # true: fine-tuning starts timesteps over instead of continuing them
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    # the whole sphere of elevations, so undersides are painted too ("bottom view" prompts below −60°)
    camera: CameraConfig = field(default_factory=lambda: CameraConfig(elevation_range=(-90.0, 90.0)))
    light: LightConfig = field(default_factory=LightConfig)  # the RGB fine-tuning stage's random lights
    texture_filter: str = "mipmap"  # or "bilinear": Latent-Paint's original lookups (under-samples)
    # weight of the prior that neighbouring texels of one chart are alike (`texture_smoothness`): without
    # it, detail finer than the renders' pixels stays as speckle in flat regions; 0 turns it off
    smoothness: float = 0.01
    # samples per pixel each way in training renders: silhouettes antialiased like the prior's images, so
    # the texels along them are not pulled toward the background
    supersample: int = 4

    def validate(self) -> None:
        super().validate()
        if self.texture_filter not in FILTERS:
            raise ConfigError(f"texture_filter must be one of {', '.join(FILTERS)}, got {self.texture_filter!r}")
        self.light.validate()
        if self.iters < 1 or self.finetune_iters < 0:
            raise ConfigError("iters must be at least 1 and finetune_iters 0 or more")
        if not 64 <= self.texture_size <= 4096 or self.texture_size % VAE_FACTOR:
            raise ConfigError(f"texture_size must be a multiple of 8 in [64, 4096], got {self.texture_size}")
        if not 8 <= self.finetune_resolution <= 2048:
            raise ConfigError("finetune_resolution must be in [8, 2048]")
        if not (self.lr > 0 and self.finetune_lr > 0 and self.background_lr > 0):
            raise ConfigError("lr, finetune_lr and background_lr must be positive")
        if not 0 <= self.lr_anneal <= 1:
            raise ConfigError(f"lr_anneal must be a fraction in [0, 1], got {self.lr_anneal}")
        if not self.smoothness >= 0:
            raise ConfigError(f"smoothness must be 0 or more, got {self.smoothness}")
        if not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample must be in [1, 8], got {self.supersample}")
        self.speed.validate()


@dataclass
class PaintResult:
    mesh: Mesh  # the input's vertices (split along UV seams), faces in the input's order, UVs, texture
    vertex_map: np.ndarray  # [V] index of the input vertex each output vertex copies
    texture: np.ndarray  # [S, S, 3] uint8 (UDIM: every tile in one atlas, as the GLB holds them)
    glb_path: Path
    png_path: Path
    tiles: dict[int, Path] = field(default_factory=dict)  # UDIM: each tile's image, <name>.<tile>.png


def atlas_padding(texture_size: int) -> int:
    """Texels between the charts of an atlas made for painting."""
    return max(PAINT_PADDING, default_padding(texture_size))


def uv_mapped(mesh: Mesh, texture_size: int) -> tuple[Mesh, np.ndarray]:
    """The mesh with the UVs it is painted through (see `paint_surface`) and the vertex map."""
    surface = paint_surface(mesh, texture_size, atlas_padding(texture_size))
    return surface.mapped, surface.vertex_map


def uv_coverage(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """Which texels of a size² texture some triangle covers (row 0 = v 1)."""
    return atlas_raster(uvs, faces, size)[0, ..., 3] > 0


@dataclass
class PaintJob(DistillJob):
    """Everything `paint` wires together: the textured mesh, its stages and the final decode."""

    scene: LatentTexture
    surface: Surface  # the mesh with the UVs it is painted through
    decoded: Callable[[], torch.Tensor]  # the latent texture through the guidance's decoder, [3, S, S]
    selection: Selection | None = None  # partial paint: the faces painted and the texels kept

    def state(self) -> torch.nn.Module:
        return self.scene

    def export_estimate_s(self) -> float:
        return estimate_texture_export_s(self.config.texture_size, self.scene.texture.device.type)

    def export(self, out_path: str | Path, on_event: EventSink | None = None) -> PaintResult:
        """The final texture, filled past the UV islands' edges, written as `out_path` (GLB) and a PNG."""
        progress = ExportProgress(on_event, {"write": self.export_estimate_s()})
        progress.start("write")
        out_path, scene, size = Path(out_path), self.scene, self.config.texture_size
        final = scene.rgb_texture.detach().clamp(0, 1) if bool(scene.rgb_started) else self.decoded()
        texture = (final.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        covered = uv_coverage(scene.uvs, scene.faces, size).cpu().numpy()
        texture = fill_empty(texture, covered)
        if self.selection is not None:
            texture = self.selection.compose(texture)
        mapped = self.surface.mapped.copy_with(texture=texture, vertex_colors=None)
        png_path = out_path.with_suffix(".png")
        # the GLB reads the atlas (glTF has no UDIM); the result's arrays keep the mesh's own UVs
        files = {out_path: glb_bytes(mapped, texture), png_path: png_bytes(texture)}
        tiles = {}
        if self.surface.layout is not None:
            for tile, image in self.surface.layout.split(texture).items():
                tiles[tile] = out_path.with_name(f"{out_path.stem}.{tile}.png")
                files[tiles[tile]] = png_bytes(image)
        write_atomically(files)
        progress.finish()
        return PaintResult(mapped.copy_with(uvs=self.surface.uvs), self.surface.vertex_map, texture, out_path,
                           png_path, tiles)


def prepare_paint(config: PaintConfig, guidance: Guidance, mesh: Mesh, faces: np.ndarray | None = None,
                  appearance: Appearance | None = None) -> PaintJob:
    """UV-map `mesh` and wire its latent texture, rasteriser, guidance and objective for `config` (validated).

    With `faces` (indices into `mesh.faces`), only those faces are painted: see `face_selection`;
    `appearance` is how every face looks now (default: the mesh's own texture or colours).
    """
    mesh = validate_mesh(mesh, "paint mesh")
    plan = plan_texture(config, mesh, faces, appearance)
    config = plan.config
    surface = paint_surface(mesh, plan.tile_size, atlas_padding(plan.tile_size))
    mapped = surface.mapped
    selection = None
    if plan.faces is not None:
        selection = select_faces(mesh, mapped, plan.faces, config.texture_size, plan.appearance, plan.layout,
                                 plan.reference)
    device = guidance.device
    speed = config.speed.resolve(device)
    frame = Frame.fit(mapped.vertices, yaw=config.front_yaw)
    generator, prompt = set_up(config, guidance, speed, frame)

    scene = LatentTexture(torch.as_tensor(frame.to_unit(mapped.vertices), device=device),
                          torch.as_tensor(mapped.faces, device=device), torch.as_tensor(mapped.uvs, device=device),
                          config.texture_size // VAE_FACTOR,
                          rgb_size=config.texture_size if config.finetune_iters else 0,
                          filtering=config.texture_filter, supersample=config.supersample)
    if selection is not None:
        selection.hold(scene, guidance)

    def render_at(size: int, rgb: bool) -> Callable[[Cameras], SceneRender]:
        """A stage's render: latents, or RGB shaded as the cameras' mode says, at `size`²."""
        return lambda cams: scene.render(cams, size, cams.shading if rgb else "latent")

    def decoded() -> torch.Tensor:
        with torch.no_grad():
            rgb = guidance.decode(scene.filled_texture()[None].float())
        return resize(rgb, config.texture_size)[0].clamp(0, 1)

    def preview_of(render: Callable[[Cameras], SceneRender]) -> Callable[[], np.ndarray]:
        def preview() -> np.ndarray:
            with torch.no_grad():
                out = render(Cameras.orbit(**PREVIEW_CAMERA, device=device))
            return to_preview(out.image, out.latent)

        return preview

    sampler = CameraSampler(config.camera, generator, device, guidance.random_background)
    objective = build_objective(config.objective, guidance)
    latent_render = render_at(config.resolution, rgb=False)
    step = DistillStep(latent_render, guidance, objective, config.timesteps, sampler, prompt, generator,
                       regularisers={"smoothness": (config.smoothness, lambda *_: scene.smoothness(rgb=False))})

    def background() -> dict:  # a fresh group per optimiser: Adam fills its defaults into the dict
        return {"params": list(scene.background.parameters()), "lr": config.background_lr}

    def enter_finetune() -> list[dict]:
        scene.start_rgb(decoded())
        return [{"params": [scene.rgb_texture]}, background()]

    anneal = final_anneal(config.lr_anneal)
    stages = [distill_stage("paint", config.iters, step, lambda: [{"params": [scene.texture]}, background()], speed,
                            preview_of(latent_render), lr_scale=anneal, lr=config.lr, betas=PAINT_BETAS)]
    if config.finetune_iters:
        # RGB renders are lit by a random light per step, so the texture converges to the albedo
        rgb_render = render_at(config.finetune_resolution, rgb=True)
        lit_step = replace(step, lighting=config.light, render=rgb_render, regularisers={
            "smoothness": (config.smoothness, lambda *_: scene.smoothness(rgb=True))})
        stages.append(distill_stage("rgb_finetune", config.finetune_iters, lit_step, enter_finetune, speed,
                                    preview_of(rgb_render), restart_schedules=config.finetune_restart_schedules,
                                    lr_scale=anneal, lr=config.finetune_lr))
    return PaintJob(config=config, stages=stages, generator=generator, speed=speed, objective=objective,
                    scene=scene, surface=surface, decoded=decoded, selection=selection)


def paint(
    config: PaintConfig,
    guidance: Guidance,
    mesh: Mesh,
    out_path: str | Path,
    on_event: EventSink = ignore,
    cancel: threading.Event | None = None,
    job_dir: str | Path | None = None,
    faces: np.ndarray | None = None,
    appearance: Appearance | None = None,
) -> PaintResult:
    """Paint `mesh` (only `faces` of it, when given, around the look `appearance` gives the others) for
    `config.prompt` under `guidance`; write `out_path` (GLB), the texture (PNG) and, for UDIM UVs, one
    PNG per tile."""
    config.validate()
    out_path = glb_output(out_path)
    return run_job(prepare_paint(config, guidance, mesh, faces, appearance), out_path, on_event, cancel, job_dir)


CONFIG = PaintConfig


def check_inputs(config: PaintConfig, mesh: Mesh | None, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Refuse inputs a job could not use, before it is queued (the config is validated): the mesh to paint, its
    UDIM tiles, the texture's size and the look of the faces (`arrays`: the submit's face selection and
    appearance), as the job will read them."""
    if mesh is None:
        raise InputError("a paint job needs the mesh to paint", "send its vertices and faces")
    arrays = arrays or {}
    plan_texture(config, mesh, arrays.get("selected_faces"), Appearance.from_wire(arrays))


def run_task(config: PaintConfig, guidance: Guidance, mesh: Mesh | None, arrays: dict[str, np.ndarray],
             out_path: str | Path, on_event: EventSink = ignore, cancel: threading.Event | None = None,
             job_dir: str | Path | None = None) -> PaintResult:
    """A task's uniform entry: paint `mesh` (only the submit's `selected_faces` of it, when given, around the look
    its appearance arrays give the others)."""
    check_inputs(config, mesh, arrays)
    return paint(config, guidance, mesh, out_path, on_event=on_event, cancel=cancel, job_dir=job_dir,
                 faces=arrays.get("selected_faces"), appearance=Appearance.from_wire(arrays))
