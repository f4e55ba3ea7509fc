"""Refined mesh → textured GLB: no marching cubes, the surface itself, simplified, unwrapped and baked.

The full-resolution surface (Magic3D's DMTet mesh) keeps its largest component, is simplified to the
face budget, unwrapped by xatlas, and both colour and a tangent-space normal map are baked from the
full-resolution surface onto the simplified one, so the detail simplification removes comes back as
shading. Writes the GLB (the normal map is its material's `normalTexture`), the colour PNG and the normal
map as its own PNG (`<name>_normal.png`).

With quads or levels of detail (`export.quad`, `export.lods`), the GLB holds one node per level
(`<name>_LOD0` …); each level's normal map is `<name>_normal.png` for LOD0, `<name>_LOD<k>_normal.png`
after it, and a level with a colour texture of its own (quad levels) reads `<name>_LOD<k>.png`. Quads are
triangulated in the GLB, as glTF requires, and kept in `<name>.obj` (with `<name>.mtl`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import trimesh

from backend.errors import InputError
from backend.events import EventSink
from backend.export.config import ExportConfig
from backend.export.files import write_atomically
from backend.export.glb import glb_bytes, png_bytes
from backend.export.levels import build_levels, lod_name
from backend.export.lod_glb import lods_glb_bytes
from backend.export.normal_map import bake_from_surface
from backend.export.obj import mtl_bytes, obj_bytes
from backend.export.pipeline import ExportResult
from backend.export.progress import ExportProgress
from backend.export.unwrap import atlas
from backend.fields import Field
from backend.isosurface import main_component, simplify
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
    if config.quad or config.lods > 1:
        return _export_levels(full, color_fn, frame, config, glb_path, device, progress)
    progress.start("simplify")
    simple = simplify(full, config.max_faces)
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


def _export_levels(full: trimesh.Trimesh, color_fn: Field, frame: Frame, config: ExportConfig, glb_path: Path,
                   device: torch.device | str, progress: ExportProgress) -> ExportResult:
    """Levels of detail and/or quads: the GLB of every level, its textures and normal maps, and with quads
    the OBJ that keeps them (`export_levels`' files)."""
    levels, textures = build_levels(full, color_fn, config, device, progress)
    progress.start("write")
    levels = [replace(level, mesh=level.mesh.copy_with(vertices=frame.from_unit(level.mesh.vertices)))
              for level in levels]
    name = glb_path.stem
    texture_paths = [glb_path.with_suffix(".png")] + [glb_path.with_name(f"{lod_name(name, k)}.png")
                                                      for k in range(1, len(textures))]
    normal_paths = [glb_path.with_name(f"{name}_normal.png")] + [
        glb_path.with_name(f"{lod_name(name, k)}_normal.png") for k in range(1, len(levels))]
    files = {glb_path: lods_glb_bytes(name, levels, textures)}
    files |= {path: png_bytes(texture) for path, texture in zip(texture_paths, textures, strict=True)}
    files |= {path: png_bytes(level.normal_map) for path, level in zip(normal_paths, levels, strict=True)}
    obj_path = None
    if config.quad:
        obj_path, mtl_path = glb_path.with_suffix(".obj"), glb_path.with_suffix(".mtl")
        files[obj_path] = obj_bytes(name, [level.mesh for level in levels], [level.polygons for level in levels],
                                    mtl_path.name)
        files[mtl_path] = mtl_bytes(name, [texture_paths[level.texture].name for level in levels],
                                    [path.name for path in normal_paths])
    write_atomically(files)
    progress.finish()
    lod0 = levels[0]
    return ExportResult(lod0.mesh.copy_with(texture=textures[lod0.texture]), textures[lod0.texture], glb_path,
                        texture_paths[0], lod0.charts, normal_paths[0], levels, textures, obj_path)
