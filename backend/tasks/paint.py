"""Latent-Paint: texture an artist's finished mesh from a prompt, without touching its geometry.

The mesh keeps its UVs when they are usable, else xatlas unwraps it (vertices split along seams, with a
map back to the originals). A 4-channel latent texture is optimised by score distillation from 64×64
rasterised views, decoded once through the guidance's VAE into the final RGB texture, and optionally
fine-tuned in RGB through the encoder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.cameras import Cameras, CameraSampler
from backend.errors import ConfigError, InputError
from backend.events import EventSink, StageStarted, ignore
from backend.export.bake import fill_empty
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.unwrap import unwrap
from backend.guidance.base import Guidance, Prompt
from backend.latent import resize
from backend.loop import Checkpointer, Stage, run_stages
from backend.mesh import Frame, Mesh, validate_mesh
from backend.objectives import OBJECTIVES
from backend.render.rasterize import rasterize
from backend.scene.latent_texture import LatentTexture
from backend.speed import SpeedConfig
from backend.tasks.distill import DistillConfig, DistillStep, SceneRender, to_preview
from backend.tasks.generate import PREVIEW_CAMERA

VAE_FACTOR = 8  # texels of the final texture per latent texel


@dataclass
class PaintConfig(DistillConfig):
    texture_size: int = 1024  # final RGB texture; the latent texture is texture_size / 8 (default 128)
    iters: int = 5000
    lr: float = 1e-2  # Latent-Paint's
    finetune_iters: int = 0  # RGB fine-tuning through the encoder after decoding (0: off)
    finetune_resolution: int = 512
    finetune_restart_schedules: bool = False  # true: fine-tuning starts timesteps over instead of continuing them
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def validate(self) -> None:
        super().validate()
        if self.iters < 1 or self.finetune_iters < 0:
            raise ConfigError("iters must be at least 1 and finetune_iters 0 or more")
        if not 64 <= self.texture_size <= 4096 or self.texture_size % VAE_FACTOR:
            raise ConfigError(f"texture_size must be a multiple of 8 in [64, 4096], got {self.texture_size}")
        if not 8 <= self.finetune_resolution <= 2048:
            raise ConfigError("finetune_resolution must be in [8, 2048]")
        if not self.lr > 0:
            raise ConfigError("lr must be positive")
        self.speed.validate()


@dataclass
class PaintResult:
    mesh: Mesh  # the input's vertices (split along UV seams), faces in the input's order, UVs, texture
    vertex_map: np.ndarray  # [V] index of the input vertex each output vertex copies
    texture: np.ndarray  # [S, S, 3] uint8
    glb_path: Path
    png_path: Path


def uv_mapped(mesh: Mesh, texture_size: int) -> tuple[Mesh, np.ndarray]:
    """The mesh with usable UVs: its own when it has them, else an xatlas atlas (and the vertex map)."""
    mesh = validate_mesh(mesh, "paint mesh")
    if mesh.uvs is not None:
        uv = mesh.uvs
        if uv.min() < -1e-4 or uv.max() > 1 + 1e-4:
            raise InputError(f"the paint mesh's UVs leave the [0, 1] square (range {uv.min():.3g} … {uv.max():.3g})",
                             "pack the UVs into [0, 1] (UDIM tiles are not supported) or remove the UV map "
                             "so the mesh is unwrapped automatically")
        e1, e2 = uv[mesh.faces[:, 1]] - uv[mesh.faces[:, 0]], uv[mesh.faces[:, 2]] - uv[mesh.faces[:, 0]]
        if np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum() > 1e-8:
            return mesh, np.arange(len(mesh.vertices))
    return unwrap(mesh, texture_size)


def uv_coverage(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> torch.Tensor:
    """Which texels of a size² texture some triangle covers (row 0 = v 1)."""
    clip = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], -1)
    return rasterize(clip, faces, (size, size))[0, ..., 3] > 0


@dataclass
class PaintJob:
    """Everything `paint` wires together: the textured mesh, its stages and the final decode."""

    config: PaintConfig
    scene: LatentTexture
    stages: list[Stage]
    generator: torch.Generator
    mapped: Mesh  # the mesh with the UVs it is painted through
    vertex_map: np.ndarray
    decoded: Callable[[], torch.Tensor]  # the latent texture through the guidance's decoder, [3, S, S]
    speed: SpeedConfig  # resolved for the guidance's device

    def run(self, on_event: EventSink = ignore, cancel: threading.Event | None = None,
            job_dir: str | Path | None = None) -> None:
        checkpointer = Checkpointer(Path(job_dir)) if job_dir is not None else None
        run_stages(self.stages, self.scene, self.generator, self.config.loop, on_event, cancel, checkpointer,
                   report_every=self.speed.report_every)

    def export(self, out_path: str | Path) -> PaintResult:
        """The final texture, filled past the UV islands' edges, written as `out_path` (GLB) and a PNG."""
        out_path, scene, size = Path(out_path), self.scene, self.config.texture_size
        final = scene.rgb_texture.detach().clamp(0, 1) if scene.rgb else self.decoded()
        texture = (final.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        covered = uv_coverage(scene.uvs, scene.faces, size).cpu().numpy()
        texture = fill_empty(texture, covered)
        result_mesh = self.mapped.copy_with(texture=texture, vertex_colors=None)
        png_path = out_path.with_suffix(".png")
        write_atomically({out_path: glb_bytes(result_mesh, texture), png_path: png_bytes(texture)})
        return PaintResult(result_mesh, self.vertex_map, texture, out_path, png_path)


def prepare_paint(config: PaintConfig, guidance: Guidance, mesh: Mesh) -> PaintJob:
    """UV-map `mesh` and wire its latent texture, rasteriser, guidance and objective for `config` (validated)."""
    mapped, vertex_map = uv_mapped(mesh, config.texture_size)
    device = guidance.device
    speed = config.speed.resolve(device)
    guidance.accelerate(speed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    frame = Frame.fit(mapped.vertices)
    guidance.set_frame(frame)
    prompt = Prompt(config.prompt, config.negative, config.view_dependent_prompt)
    guidance.prepare(prompt)

    scene = LatentTexture(torch.as_tensor(frame.to_unit(mapped.vertices), device=device),
                          torch.as_tensor(mapped.faces, device=device), torch.as_tensor(mapped.uvs, device=device),
                          config.texture_size // VAE_FACTOR, generator,
                          rgb_size=config.texture_size if config.finetune_iters else 0)
    size = {"px": config.resolution}

    def render(cams: Cameras) -> SceneRender:
        image, coverage = scene.render(cams, size["px"])
        return SceneRender(image, latent=not scene.rgb, extras=coverage)

    def decoded() -> torch.Tensor:
        with torch.no_grad():
            rgb = guidance.decode(scene.texture[None].float())
        return resize(rgb, config.texture_size)[0].clamp(0, 1)

    def preview() -> np.ndarray:
        with torch.no_grad():
            out = render(Cameras.orbit(**PREVIEW_CAMERA, device=device))
        return to_preview(out.image, out.latent)

    sampler = CameraSampler(config.camera, generator, device, guidance.random_background)
    step = DistillStep(render, guidance, OBJECTIVES[config.objective.name](config.objective, guidance),
                       config.timesteps, sampler, prompt, generator)

    def enter_latent() -> torch.optim.Optimizer:
        return speed.adam([scene.texture, *scene.background.parameters()], lr=config.lr)

    def enter_finetune() -> torch.optim.Optimizer:
        scene.start_rgb(decoded())
        size["px"] = config.finetune_resolution
        return speed.adam([scene.rgb_texture, *scene.background.parameters()], lr=config.lr)

    stages = [Stage("paint", config.iters, enter_latent, step, preview)]
    if config.finetune_iters:
        stages.append(Stage("rgb_finetune", config.finetune_iters, enter_finetune, step, preview,
                            restart_schedules=config.finetune_restart_schedules))
    return PaintJob(config, scene, stages, generator, mapped, vertex_map, decoded, speed)


def paint(
    config: PaintConfig,
    guidance: Guidance,
    mesh: Mesh,
    out_path: str | Path,
    on_event: EventSink = ignore,
    cancel: threading.Event | None = None,
    job_dir: str | Path | None = None,
) -> PaintResult:
    """Paint `mesh` for `config.prompt` under `guidance`; write `out_path` (GLB) and the texture (PNG)."""
    config.validate()
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".glb":
        raise InputError(f"the output {out_path.name!r} must end in .glb")
    job = prepare_paint(config, guidance, mesh)
    job.run(on_event, cancel, job_dir)
    on_event(StageStarted("export", 1))
    return job.export(out_path)
