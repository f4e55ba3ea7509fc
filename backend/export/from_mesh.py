"""Refined mesh → textured GLB: no marching cubes, the surface itself, simplified, unwrapped and baked.

The full-resolution surface (Magic3D's DMTet mesh) keeps its largest component, is simplified to the
face budget, unwrapped by xatlas, and both colour and a tangent-space normal map are baked from the
full-resolution surface onto the simplified one, so the detail simplification removes comes back as
shading. Writes the GLB (the normal map is its material's `normalTexture`), the colour PNG and the normal
map as its own PNG (`<name>_normal.png`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from backend.errors import InputError
from backend.events import EventSink
from backend.export.config import ExportConfig
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.normal_map import bake_from_surface
from backend.export.pipeline import ExportResult
from backend.export.progress import ExportProgress
from backend.export.unwrap import atlas
from backend.fields import Field
from backend.isosurface import main_component
from backend.mesh import Frame, Mesh


def export_surface(vertices: torch.Tensor, faces: torch.Tensor, color_fn: Field, frame: Frame,
                   config: ExportConfig, out_path: Path, device: torch.device | str = "cpu",
                   on_event: EventSink | None = None) -> ExportResult:
    """Write the surface `vertices` [V, 3] / `faces` [F, 3] (unit frame) coloured by `color_fn` as a GLB.

    Each sub-step is reported to `on_event` as a stage `export: NAME` that ends at its total."""
    config.validate()
    glb_path = Path(out_path)
    if glb_path.suffix.lower() != ".glb":
        raise InputError(f"the output file {glb_path.name!r} must end in .glb")
    if len(faces) == 0:
        raise InputError("the refined mesh is empty: its SDF has no zero crossing",
                         "run fewer mesh steps (--mesh-iters) or a lower mesh learning rate")
    progress = ExportProgress(on_event, {})
    progress.start("cleanup")
    full = trimesh.Trimesh(vertices.detach().cpu().numpy().astype(np.float64), faces.cpu().numpy())
    full.update_faces(full.nondegenerate_faces())
    full = main_component(full)
    progress.finish()
    progress.start("simplify")
    simple = full
    if len(full.faces) > config.max_faces:
        simple = full.simplify_quadric_decimation(face_count=config.max_faces)
    progress.finish()
    progress.start("unwrap")
    unwrapped = atlas(Mesh(np.asarray(simple.vertices, np.float32), np.asarray(simple.faces, np.int64)),
                      config.texture_size, config.atlas_smoothing)
    progress.finish()
    progress.start("bake")
    mesh = unwrapped.mesh
    baked = bake_from_surface(mesh, full, color_fn, config.texture_size, device)
    progress.finish()
    progress.start("write")
    mesh = mesh.copy_with(vertices=frame.from_unit(mesh.vertices), texture=baked.texture)
    png_path = glb_path.with_suffix(".png")
    normal_path = glb_path.with_name(glb_path.stem + "_normal.png")
    write_atomically({glb_path: glb_bytes(mesh, baked.texture, baked.normal_map),
                      png_path: png_bytes(baked.texture), normal_path: png_bytes(baked.normal_map)})
    progress.finish()
    return ExportResult(mesh, baked.texture, glb_path, png_path, unwrapped.charts, normal_path)
