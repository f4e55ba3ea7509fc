"""Text (and optionally sketch) to a textured mesh: Latent-NeRF + score distillation, then export.

Stages: "latent" renders the NeRF's 4 latent channels at `resolution` straight into the guidance's
latent space; "rgb_refine" renders RGB through the learnable 4→3 layer at `refine.resolution`, shaded
DreamFusion-style (a random point light and one of lit / textureless / albedo per step, normals from the
density's gradient, the orientation loss), and distils through the guidance's encoder; "mesh" (Magic3D)
hands the NeRF's density to a DMTet grid and refines the extracted mesh, coloured by the NeRF's colour
field, at up to 512². The export takes the refined mesh when that stage ran, else meshes the density.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backend.cameras import CameraSampler
from backend.depth import DepthConfig, MonocularDepth, depth_regulariser
from backend.errors import ConfigError
from backend.events import EventSink, ignore
from backend.export import ExportConfig, ExportResult, export_asset
from backend.export.from_mesh import export_surface
from backend.export.libraries import check as check_libraries
from backend.export.progress import ExportProgress, estimate_export_s
from backend.guidance.base import Guidance
from backend.isosurface import extract_mesh
from backend.loop import Stage
from backend.mesh import MAX_FACES, Frame, Mesh
from backend.objectives.config import build_objective
from backend.reference import ReferenceImage, image_input
from backend.regularisers import orientation, ramp, sparsity, z_variance
from backend.render.volume import VolumeConfig
from backend.scene.dmtet import (
    REFERENCE_RESOLUTION,
    DMTet,
    DMTetScene,
    MeshStageConfig,
    laplacian_smoothness,
    normal_consistency,
)
from backend.scene.nerf import LatentNeRF, NeRFConfig
from backend.scene.nerf_scene import NeRFScene
from backend.shading import LightConfig
from backend.sketch import SketchConfig, SketchShape
from backend.speed import FieldSpeedConfig
from backend.tasks.distill import (
    DistillConfig,
    DistillJob,
    DistillStep,
    Regulariser,
    check_render_size,
    distill_stage,
    glb_output,
    run_job,
    set_up,
)
from backend.tasks.reference_view import ReferenceView, silhouette_box


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
    lambda_orient: float = 1e-2  # DreamFusion's orientation loss (normals facing away from the camera)
    # timesteps and ramps continue the job's schedule (HiFA is one schedule over the whole job); true
    # starts them over for this stage, as a second run of the method would
    restart_schedules: bool = False


@dataclass
class GenerateConfig(DistillConfig):
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    render: VolumeConfig = field(default_factory=VolumeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    shading: LightConfig = field(default_factory=LightConfig)  # RGB stages' light and render modes
    mesh: MeshStageConfig = field(default_factory=MeshStageConfig)
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
        if not self.refine.lambda_orient >= 0:
            raise ConfigError(f"refine.lambda_orient must be ≥ 0, got {self.refine.lambda_orient}")
        self.shading.validate("shading")
        for part in (self.nerf, self.render, self.mesh, self.export, self.sketch, self.depth, self.speed):
            part.validate()


class GenerateState(nn.Module):
    """Everything a generate checkpoint holds: the NeRF and, with a mesh stage, its tetrahedral grid."""

    def __init__(self, nerf: LatentNeRF, dmtet: DMTet | None) -> None:
        super().__init__()
        self.nerf = nerf
        self.dmtet = dmtet


@dataclass
class GenerateJob(DistillJob):
    """Everything `generate` wires together: the scenes, their stages and where the asset lands."""

    scene: NeRFScene
    frame: Frame
    device: torch.device
    mesh: DMTetScene | None = None  # the mesh refinement stage's scene, when the job has that stage

    def state(self) -> nn.Module:
        return GenerateState(self.scene.nerf, self.mesh.dmtet if self.mesh is not None else None)

    def export_estimate_s(self) -> float:
        return estimate_export_s(self.config.export, self.device.type)

    def export(self, out_path: str | Path, density: Callable[[torch.Tensor], torch.Tensor] | None = None,
               on_event: EventSink | None = None) -> ExportResult:
        """Write the asset to `out_path`: the refined mesh when the mesh stage ran, else marching cubes of the
        field's density (`density` replaces the field's own)."""
        nerf = self.scene.nerf
        nerf.eval()
        if self.mesh is not None and bool(self.mesh.dmtet.initialised) and density is None:
            with torch.no_grad():
                vertices, faces = self.mesh.dmtet.surface()
            return export_surface(vertices, faces, lambda p: self.mesh.color(p).clamp(0, 1), self.frame,
                                  self.config.export, Path(out_path), device=self.device, on_event=on_event)
        density = density or nerf.density
        if self.scene.renderer.occupancy is not None:  # empty space stays empty without the field's cost
            density = self.scene.renderer.occupancy.wrap_density(density)
        e = self.config.export
        if e.quad or e.lods > 1:  # game-ready levels come from the full marching-cubes surface, as from a mesh's
            full = extract_mesh(density, e.grid_resolution, e.density_threshold, e.bound, MAX_FACES, self.device,
                                e.memory_gb, ExportProgress(on_event, {}))
            return export_surface(torch.as_tensor(full.vertices), torch.as_tensor(full.faces), nerf.rgb_at,
                                  self.frame, e, Path(out_path), device=self.device, on_event=on_event)
        return export_asset(density, nerf.rgb_at, self.frame, self.config.export, Path(out_path),
                            device=self.device, on_event=on_event)


def prepare_generate(
    config: GenerateConfig,
    guidance: Guidance,
    sketch: Mesh | None = None,
    sketch_frame: Frame | None = None,
    image: ReferenceImage | None = None,
) -> GenerateJob:
    """Wire the scene, renderer, guidance, objective and regularisers for `config` (validated); with `image`,
    its view is fitted to it at every stage (`ReferenceView`)."""
    device = guidance.device
    speed = config.speed.resolve(device)
    shape = (SketchShape(sketch, config.sketch, config.nerf.bound, device, front_yaw=config.front_yaw)
             if sketch is not None else None)
    frame = shape.frame if shape is not None else (
        sketch_frame or guidance.suggested_frame() or Frame()).turned(config.front_yaw)
    generator, prompt = set_up(config, guidance, speed, frame)

    scene = NeRFScene(config.nerf, config.render, device, generator, speed)
    nerf = scene.nerf
    sampler = CameraSampler(config.camera, generator, device, guidance.random_background)
    regularisers: dict[str, tuple[float, Regulariser]] = {
        "sparsity": (config.optim.lambda_sparsity, lambda out, *_: sparsity(out.opacity))}
    if shape is not None:
        regularisers["sketch"] = (config.sketch.weight, lambda out, *_: shape.loss(out.rays.points, out.rays.sigmas))
    regularisers["zvar"] = (config.optim.lambda_zvar, lambda out, step, total: ramp(step, total) * z_variance(
        out.rays.t_mid, out.rays.weights))
    if config.depth.weight_for(config.objective.name) > 0:
        regularisers["depth"] = (config.depth.weight_for(config.objective.name), depth_regulariser(
            MonocularDepth.load(config.depth.model, device), guidance.decode))
    objective = build_objective(config.objective, guidance)
    if image is not None and shape is not None and config.image.fit_sketch:  # the image's object onto the sketch's
        box = silhouette_box(shape.vertices, shape.faces, config.image)
        image = image.fitted(box) if box is not None else image
    reference = ReferenceView(image, config.image, guidance, device) if image is not None else None
    step = DistillStep(lambda cams: scene.render(cams, config.resolution, "latent"), guidance, objective,
                       config.timesteps, sampler, prompt, generator, config.optim.batch, regularisers,
                       reference=reference)
    orient = config.refine.lambda_orient
    refine_step = replace(step, lighting=config.shading, regularisers={**regularisers, "orient": (
        orient, lambda out, *_: orientation(out.rays.normals, out.rays.directions, out.rays.weights))},
        # normals for the orientation loss on the prior's views (they carry a light), not the reference view's
        render=lambda cams: scene.render(cams, config.refine.resolution, cams.shading,
                                         normals=orient > 0 and cams.light is not None))
    adam = {"betas": (0.9, 0.99), "eps": 1e-15}
    stages = [distill_stage("latent", config.optim.iters, step,
                            lambda: nerf.param_groups(config.optim.lr, config.optim.grid_lr_scale), speed,
                            lambda: scene.preview(config.resolution, rgb=False), **adam)]
    if config.refine.iters:
        stages.append(distill_stage(
            "rgb_refine", config.refine.iters, refine_step,
            lambda: nerf.param_groups(config.refine.lr, config.optim.grid_lr_scale, rgb=True), speed,
            lambda: scene.preview(config.refine.resolution, rgb=True),
            restart_schedules=config.refine.restart_schedules, **adam))
    mesh = None
    if config.mesh.iters:
        mesh = DMTetScene(DMTet(config.mesh.grid_resolution, config.nerf.bound, device), nerf)
        stages.append(mesh_stage(config, mesh, replace(step, regularisers={}), speed))
    return GenerateJob(config=config, stages=stages, generator=generator, speed=speed, objective=objective,
                       scene=scene, frame=frame, device=device, mesh=mesh)


def mesh_stage(config: GenerateConfig, mesh: DMTetScene, step: DistillStep, speed: FieldSpeedConfig) -> Stage:
    """Magic3D's refinement: the NeRF's density hands over to the DMTet grid, its colour field stays."""
    c = config.mesh
    nerf = mesh.nerf

    def regulariser(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Regulariser:
        return lambda out, *_: fn(*out.surface)

    # the smoothing weights are the references' at 512² renders; a summed guidance loss shrinks with the
    # render's pixel count, so they shrink with it and keep the references' balance at any size (at 128²
    # on the known answers, 10⁴ unscaled inflated thin parts: the dumbbell's IoU 0.96 → 0.91)
    size = (c.resolution / REFERENCE_RESOLUTION) ** 2 if step.objective.sums_over_pixels else 1.0
    # its own cameras (zoomed in) and its own t range, with the job's background, view prompts and schedule
    cameras = CameraSampler(replace(config.camera, radius_range=c.radius_range, fov_range=c.fov_range,
                                    elevation_range=c.elevation_range), step.generator, step.cameras.device,
                            step.cameras.background_probability)
    mesh_step = replace(step, lighting=config.shading, cameras=cameras, t_range=(c.t_min, c.t_max), regularisers={
        "normal_consistency": (c.lambda_normal * size, regulariser(normal_consistency)),
        "laplacian": (c.lambda_laplacian * size, regulariser(laplacian_smoothness))},
        render=lambda cams: mesh.render(cams, c.resolution, cams.shading))

    def enter() -> list[dict]:
        mesh.dmtet.init_from_density(nerf.density, config.export.density_threshold, c.init_clamp)
        return mesh.dmtet.param_groups(c) + nerf.param_groups(c.lr_color, config.optim.grid_lr_scale, rgb=True)

    return distill_stage("mesh", c.iters, mesh_step, enter, speed, mesh.preview, betas=(0.9, 0.99), eps=1e-15)


def generate(
    config: GenerateConfig,
    guidance: Guidance,
    out_path: str | Path,
    sketch: Mesh | None = None,
    sketch_frame: Frame | None = None,
    on_event: EventSink = ignore,
    cancel: threading.Event | None = None,
    job_dir: str | Path | None = None,
    image: ReferenceImage | None = None,
) -> ExportResult:
    """Optimise a Latent-NeRF for `config.prompt` under `guidance` and export it to `out_path` (GLB).

    With a `sketch` (a triangle mesh of primitives, in any placement), the NeRF follows it (Sketch-Shape
    loss) and the asset lands where the sketch was. Without one it lands in `sketch_frame` if given, else where the
    guidance suggests (a target mesh's own frame), else in the unit volume. With `image` (a reference image),
    the view it was seen from (`config.image`) is fitted to it. With `job_dir`, checkpoints go there and a
    rerun resumes from the last one.
    """
    config.validate()
    check_libraries(config.export.quad, config.export.lods)  # refused now, not after training
    out_path = glb_output(out_path)
    return run_job(prepare_generate(config, guidance, sketch, sketch_frame, image), out_path, on_event, cancel,
                   job_dir)


CONFIG = GenerateConfig


def check_inputs(config: GenerateConfig, sketch: Mesh | None, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Refuse inputs a job could not use, before it is queued (the config is validated); `arrays` are the
    submit's other inputs (the protocol has checked that a generate submit carries none but its sketch and
    its reference image)."""
    check_libraries(config.export.quad, config.export.lods)
    if sketch is not None:
        Frame.fit(sketch.vertices)  # a sketch with no extent cannot place anything
    image_input(arrays or {}, config.image)


def run_task(config: GenerateConfig, guidance: Guidance, sketch: Mesh | None, arrays: dict[str, np.ndarray],
             out_path: str | Path, on_event: EventSink = ignore, cancel: threading.Event | None = None,
             job_dir: str | Path | None = None) -> ExportResult:
    """A task's uniform entry: a sketch both shapes the field (Sketch-Shape loss) and places the asset; a
    reference image (`arrays["image"]`) is fitted in its view."""
    return generate(config, guidance, out_path, sketch=sketch, on_event=on_event, cancel=cancel, job_dir=job_dir,
                    image=image_input(arrays, config.image))
