"""Text (and optionally sketch) to a textured mesh: Latent-NeRF + score distillation, then export.

Stages: "latent" renders the NeRF's 4 latent channels at `resolution` straight into the guidance's
latent space; "rgb_refine" renders RGB through the learnable 4→3 layer at `refine.resolution` and
distils through the guidance's encoder; then the field is exported as a GLB.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.cameras import Cameras, CameraSampler
from backend.depth import DepthConfig, MonocularDepth, depth_regulariser
from backend.errors import ConfigError, InputError
from backend.events import EventSink, StageStarted, ignore
from backend.export import ExportConfig, ExportResult, export_asset
from backend.guidance.base import Guidance, Prompt
from backend.loop import Checkpointer, Stage, run_stages
from backend.mesh import Frame, Mesh
from backend.objectives import OBJECTIVES
from backend.regularisers import ramp, sparsity, z_variance
from backend.render.volume import VolumeConfig, VolumeRenderer
from backend.scene.background import solid_backdrop
from backend.scene.nerf import LatentNeRF, NeRFConfig
from backend.sketch import SketchConfig, SketchShape
from backend.speed import FieldSpeedConfig
from backend.tasks.distill import DistillConfig, DistillStep, SceneRender, check_render_size, to_preview


@dataclass
class OptimConfig:
    iters: int = 5000
    lr: float = 1e-3
    grid_lr_scale: float = 10.0  # Latent-NeRF trains the hash table 10× faster than the MLPs
    batch: int = 1
    lambda_sparsity: float = 5e-4
    lambda_zvar: float = 0.0  # HiFA's z-variance along rays, ramped in over the first half of the job's steps


@dataclass
class RefineConfig:
    iters: int = 1000  # 0 skips RGB refinement
    resolution: int = 256  # RGB render size; the guidance's encoder resizes to its own input size
    lr: float = 1e-3
    # timesteps and ramps continue the job's schedule (HiFA is one schedule over the whole job); true
    # starts them over for this stage, as a second run of the method would
    restart_schedules: bool = False


@dataclass
class GenerateConfig(DistillConfig):
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    render: VolumeConfig = field(default_factory=VolumeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sketch: SketchConfig = field(default_factory=SketchConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    speed: FieldSpeedConfig = field(default_factory=FieldSpeedConfig)

    def validate(self) -> None:
        super().validate()
        if self.optim.iters < 1:
            raise ConfigError(f"iters must be at least 1, got {self.optim.iters}")
        if self.refine.iters < 0:
            raise ConfigError(f"refine.iters must be 0 or more, got {self.refine.iters}")
        check_render_size("refine.resolution", self.refine.resolution)
        if not (self.optim.lr > 0 and self.refine.lr > 0 and self.optim.grid_lr_scale > 0):
            raise ConfigError("learning rates must be positive")
        if self.optim.batch < 1 or self.optim.lambda_sparsity < 0 or self.optim.lambda_zvar < 0:
            raise ConfigError("optim.batch must be ≥ 1, optim.lambda_sparsity and optim.lambda_zvar ≥ 0")
        for part in (self.nerf, self.render, self.export, self.sketch, self.depth, self.speed):
            part.validate()


PREVIEW_CAMERA = {"elevation": 15.0, "azimuth": 30.0, "radius": 1.4, "fov": 50.0}


class NeRFScene:
    """The Latent-NeRF with its renderer: renders latents or RGB for a batch of cameras."""

    def __init__(self, config: GenerateConfig, device: torch.device, generator: torch.Generator,
                 speed: FieldSpeedConfig | None = None) -> None:
        speed = speed or config.speed.resolve(device)
        self.nerf = LatentNeRF(config.nerf).to(device)
        self.renderer = VolumeRenderer(config.render, config.nerf.bound, speed.occupancy)
        self.generator = generator
        self.size = config.resolution
        self._field = self.nerf.field
        if speed.compile_field != "off":
            # not static: the sample count differs between stages, previews and importance passes
            self._field = torch.compile(self.nerf.field, mode=speed.compile_field)

    def field(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, feats = self._field(x)
        return sigma, self.nerf.color(feats)

    def render(self, cameras: Cameras, train: bool = True) -> SceneRender:
        o, d = cameras.rays(self.size)
        background = self.nerf.background
        if cameras.background is not None:  # this step's random solid colours, one per camera
            solid = solid_backdrop(cameras.background, latent=not self.nerf.rgb).repeat_interleave(self.size**2, 0)
            background = lambda _directions: solid  # noqa: E731 - rays are flattened camera by camera
        out = self.renderer.render(self.field, background, o, d, self.generator if train else None)
        return SceneRender(out.image, latent=not self.nerf.rgb, extras=out)

    def preview(self) -> object:
        cams = Cameras.orbit(**PREVIEW_CAMERA, device=next(self.nerf.parameters()).device)
        with torch.no_grad():
            out = self.render(cams, train=False)
        return to_preview(out.image, out.latent)


@dataclass
class GenerateJob:
    """Everything `generate` wires together: the scene, its stages and where the asset lands."""

    config: GenerateConfig
    scene: NeRFScene
    stages: list[Stage]
    generator: torch.Generator
    frame: Frame
    speed: FieldSpeedConfig  # resolved for the guidance's device
    device: torch.device

    def run(self, on_event: EventSink = ignore, cancel: threading.Event | None = None,
            job_dir: str | Path | None = None) -> None:
        checkpointer = Checkpointer(Path(job_dir)) if job_dir is not None else None
        run_stages(self.stages, self.scene.nerf, self.generator, self.config.loop, on_event, cancel, checkpointer,
                   report_every=self.speed.report_every)

    def export(self, out_path: str | Path, density: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> ExportResult:
        """Mesh, unwrap and bake the field into `out_path`; `density` replaces the field's own density."""
        nerf = self.scene.nerf
        nerf.eval()
        return export_asset(density or nerf.density, nerf.rgb_at, self.frame, self.config.export, Path(out_path),
                            device=self.device)


def prepare_generate(
    config: GenerateConfig,
    guidance: Guidance,
    sketch: Mesh | None = None,
    sketch_frame: Frame | None = None,
) -> GenerateJob:
    """Wire the scene, renderer, guidance, objective and regularisers for `config` (validated)."""
    device = guidance.device
    speed = config.speed.resolve(device)
    guidance.accelerate(speed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    shape = SketchShape(sketch, config.sketch, config.nerf.bound, device) if sketch is not None else None
    frame = shape.frame if shape is not None else (sketch_frame or guidance.suggested_frame() or Frame())
    guidance.set_frame(frame)
    prompt = Prompt(config.prompt, config.negative, config.view_dependent_prompt)
    guidance.prepare(prompt)

    scene = NeRFScene(config, device, generator, speed)
    nerf = scene.nerf
    sampler = CameraSampler(config.camera, generator, device, guidance.random_background)
    regularisers = {"sparsity": (config.optim.lambda_sparsity, lambda out, *_: sparsity(out.extras.opacity))}
    if shape is not None:
        regularisers["sketch"] = (config.sketch.weight,
                                  lambda out, *_: shape.loss(out.extras.points, out.extras.sigmas))
    regularisers["zvar"] = (config.optim.lambda_zvar, lambda out, step, total: ramp(step, total) * z_variance(
        out.extras.t_mid, out.extras.weights))
    if config.depth.weight > 0:
        regularisers["depth"] = (config.depth.weight, depth_regulariser(
            MonocularDepth.load(config.depth.model, device), guidance.decode))
    step = DistillStep(scene.render, guidance, OBJECTIVES[config.objective.name](config.objective, guidance),
                       config.timesteps, sampler, prompt, generator, config.optim.batch, regularisers)

    def enter_latent() -> torch.optim.Optimizer:
        nerf.rgb, scene.size = False, config.resolution
        return speed.adam(nerf.param_groups(config.optim.lr, config.optim.grid_lr_scale), betas=(0.9, 0.99),
                          eps=1e-15)

    def enter_refine() -> torch.optim.Optimizer:
        nerf.rgb, scene.size = True, config.refine.resolution
        return speed.adam(nerf.param_groups(config.refine.lr, config.optim.grid_lr_scale), betas=(0.9, 0.99),
                          eps=1e-15)

    stages = [Stage("latent", config.optim.iters, enter_latent, step, scene.preview)]
    if config.refine.iters:
        stages.append(Stage("rgb_refine", config.refine.iters, enter_refine, step, scene.preview,
                            restart_schedules=config.refine.restart_schedules))
    return GenerateJob(config, scene, stages, generator, frame, speed, device)


def generate(
    config: GenerateConfig,
    guidance: Guidance,
    out_path: str | Path,
    sketch: Mesh | None = None,
    sketch_frame: Frame | None = None,
    on_event: EventSink = ignore,
    cancel: threading.Event | None = None,
    job_dir: str | Path | None = None,
) -> ExportResult:
    """Optimise a Latent-NeRF for `config.prompt` under `guidance` and export it to `out_path` (GLB).

    With a `sketch` (a triangle mesh of primitives, in any placement), the NeRF follows it (Sketch-Shape
    loss) and the asset lands where the sketch was. Without one it lands in `sketch_frame` if given, else where the
    guidance suggests (a target mesh's own frame), else in the unit volume. With `job_dir`,
    checkpoints go there and a rerun resumes from the last one.
    """
    config.validate()
    if config.objective.name not in OBJECTIVES:
        raise ConfigError(f"unknown method {config.objective.name!r}")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".glb":
        raise InputError(f"the output {out_path.name!r} must end in .glb")
    job = prepare_generate(config, guidance, sketch, sketch_frame)
    job.run(on_event, cancel, job_dir)
    on_event(StageStarted("export", 1))
    return job.export(out_path)
