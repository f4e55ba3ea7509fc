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

from backend.cameras import Cameras, CameraSampler
from backend.errors import InputError
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
from backend.reference import ReferenceImage, image_input
from backend.render.atlas import atlas_raster, fill_empty
from backend.scene.base import PREVIEW_CAMERA
from backend.scene.latent_texture import LatentTexture
from backend.tasks.appearance import Appearance
from backend.tasks.distill import (
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
from backend.tasks.paint_config import PAINT_BETAS, PAINT_PADDING, VAE_FACTOR, PaintConfig
from backend.tasks.paint_projection import ProjectedTarget, Projection, project_image
from backend.tasks.paint_surface import Surface, paint_surface, plan_texture


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
    projection: Projection | None = None  # a reference image on the texels its view sees

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
        if self.projection is not None:  # the image's own colours where its view sees the surface
            texture = self.projection.blend(texture)
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
                  appearance: Appearance | None = None, image: ReferenceImage | None = None) -> PaintJob:
    """UV-map `mesh` and wire its latent texture, rasteriser, guidance and objective for `config` (validated).

    With `faces` (indices into `mesh.faces`), only those faces are painted: see `face_selection`;
    `appearance` is how every face looks now (default: the mesh's own texture or colours). With `image`, the
    texels its view (`config.image`) sees take its colours (`paint_projection`); the prompt paints the rest.
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
    projection = target = None
    if image is not None:
        projection = project_image(scene.vertices, scene.faces, scene.uvs, config.texture_size, image,
                                   config.image.camera(device))
        if selection is not None:
            projection = projection.restricted(selection.painted)
        target = ProjectedTarget(projection, guidance.encode, scene.texture.shape[-1], device)

    def regularisers(rgb: bool) -> dict:
        """The smoothness prior, and with an image its projected colours on the texels its view sees."""
        texture = (lambda: scene.rgb_texture) if rgb else (lambda: scene.texture)
        out = {"smoothness": (config.smoothness, lambda *_: scene.smoothness(rgb=rgb))}
        if target is not None:
            out["image"] = (target.weight(config.image.texture_weight, rgb), lambda *_: target.loss(texture(), rgb))
        return out

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
                       regularisers=regularisers(rgb=False))

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
        lit_step = replace(step, lighting=config.light, render=rgb_render, regularisers=regularisers(rgb=True))
        stages.append(distill_stage("rgb_finetune", config.finetune_iters, lit_step, enter_finetune, speed,
                                    preview_of(rgb_render), restart_schedules=config.finetune_restart_schedules,
                                    lr_scale=anneal, lr=config.finetune_lr))
    return PaintJob(config=config, stages=stages, generator=generator, speed=speed, objective=objective,
                    scene=scene, surface=surface, decoded=decoded, selection=selection, projection=projection)


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
    image: ReferenceImage | None = None,
) -> PaintResult:
    """Paint `mesh` (only `faces` of it, when given, around the look `appearance` gives the others) for
    `config.prompt` under `guidance`, the texels `image`'s view sees from the image; write `out_path` (GLB),
    the texture (PNG) and, for UDIM UVs, one PNG per tile."""
    config.validate()
    out_path = glb_output(out_path)
    return run_job(prepare_paint(config, guidance, mesh, faces, appearance, image), out_path, on_event, cancel,
                   job_dir)


CONFIG = PaintConfig


def check_inputs(config: PaintConfig, mesh: Mesh | None, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Refuse inputs a job could not use, before it is queued (the config is validated): the mesh to paint, its
    UDIM tiles, the texture's size, the look of the faces (`arrays`: the submit's face selection and
    appearance) and the reference image, as the job will read them."""
    if mesh is None:
        raise InputError("a paint job needs the mesh to paint", "send its vertices and faces")
    arrays = arrays or {}
    plan_texture(config, mesh, arrays.get("selected_faces"), Appearance.from_wire(arrays))
    image_input(arrays, config.image)


def run_task(config: PaintConfig, guidance: Guidance, mesh: Mesh | None, arrays: dict[str, np.ndarray],
             out_path: str | Path, on_event: EventSink = ignore, cancel: threading.Event | None = None,
             job_dir: str | Path | None = None) -> PaintResult:
    """A task's uniform entry: paint `mesh` (only the submit's `selected_faces` of it, when given, around the look
    its appearance arrays give the others; the texels a reference image's view sees from `arrays["image"]`)."""
    check_inputs(config, mesh, arrays)
    return paint(config, guidance, mesh, out_path, on_event=on_event, cancel=cancel, job_dir=job_dir,
                 faces=arrays.get("selected_faces"), appearance=Appearance.from_wire(arrays),
                 image=image_input(arrays, config.image))
