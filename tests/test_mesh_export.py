"""Export from a refined mesh: simplified surface, UV atlas, colour and tangent-space normal map baked from the
full-resolution surface, the GLB's normalTexture, and the add-on wiring it through a Normal Map node."""

from __future__ import annotations

import io

import numpy as np
import torch
import trimesh
from PIL import Image

from backend.export.config import ExportConfig
from backend.export.from_mesh import export_surface
from backend.export.normal_map import tangent_frames
from backend.export.unwrap import chart_count, unwrap
from backend.mesh import Frame, Mesh
from backend.render.marching_tets import TetGrid, marching_tets


def bumpy_sphere() -> tuple[torch.Tensor, torch.Tensor]:
    grid = TetGrid.build(28, 1.0)
    p = grid.vertices
    r = p.norm(dim=-1)
    bumps = 0.04 * torch.sin(6 * torch.atan2(p[:, 1], p[:, 0]))
    return marching_tets(grid, grid.vertices, r - 0.6 - bumps)


def colour(points: torch.Tensor) -> torch.Tensor:
    return torch.stack([(points[:, 2] > 0).float(), torch.full_like(points[:, 0], 0.3),
                        (points[:, 2] <= 0).float()], -1)


def test_tangent_frames_are_orthonormal_and_follow_the_uvs():
    plane = Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32),
                 np.array([[0, 1, 2], [0, 2, 3]]), uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32))
    normals, tangents, sign = tangent_frames(plane)
    np.testing.assert_allclose(normals, [[0, 0, 1]] * 4, atol=1e-6)
    np.testing.assert_allclose(tangents, [[1, 0, 0]] * 4, atol=1e-6)  # +u is +x
    np.testing.assert_array_equal(sign, 1.0)  # N × T = +y = +v


def test_refined_mesh_export_bakes_a_normal_map_into_the_glb(tmp_path):
    vertices, faces = bumpy_sphere()
    frame = Frame(center=(3.0, -1.0, 0.5), scale=0.5)
    config = ExportConfig(max_faces=600, texture_size=256)
    result = export_surface(vertices, faces, colour, frame, config, tmp_path / "ball.glb")
    assert len(result.mesh.faces) <= 600
    # the asset sits in the input's frame: a sphere of radius ≈ 0.6 / 0.5 around the frame's centre
    radius = np.linalg.norm(result.mesh.vertices - np.array(frame.center), axis=1)
    assert radius.min() > 1.0 and radius.max() < 1.45
    welded = trimesh.Trimesh(result.mesh.vertices, result.mesh.faces)
    welded.merge_vertices()
    assert welded.is_watertight and len(welded.split(only_watertight=False)) == 1
    assert result.charts == chart_count(result.mesh) and 1 <= result.charts <= 60

    # structural check: trimesh reads the GLB back with a normal texture in its material
    scene = trimesh.load(result.glb_path)
    loaded = next(iter(scene.geometry.values()))
    material = loaded.visual.material
    assert material.normalTexture is not None and material.baseColorTexture is not None
    normal_map = np.asarray(Image.open(result.normal_map_path).convert("RGB")).astype(np.float32) / 255 * 2 - 1
    assert normal_map.shape == (256, 256, 3)
    z = normal_map[..., 2]
    # mostly the simplified surface's own normal, with the bumps' detail tilting it
    assert np.median(z) > 0.9 and (z < 0.97).mean() > 0.05
    assert np.asarray(material.normalTexture).shape[:2] == (256, 256)
    # colours come from the colour field at the full surface: red on top, blue below
    texture = np.asarray(Image.open(io.BytesIO(result.png_path.read_bytes())).convert("RGB"))
    top = result.mesh.vertices[:, 2] > frame.center[2] + 0.3
    uv = result.mesh.uvs[top]
    rows = np.clip(((1 - uv[:, 1]) * 256).astype(int), 0, 255)
    cols = np.clip((uv[:, 0] * 256).astype(int), 0, 255)
    assert texture[rows, cols, 0].mean() > 200 and texture[rows, cols, 2].mean() < 60


def test_unwrapped_sphere_counts_its_charts():
    sphere = trimesh.creation.icosphere(3)
    mesh, _ = unwrap(Mesh(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces)), 256)
    assert 1 <= chart_count(mesh) <= 30


def test_addon_wires_the_normal_map_through_a_normal_map_node(tmp_path):
    import test_addon_support as support

    support.fresh_scene()
    bpy = support.modules()[0]
    results = support.submodule("results")
    vertices, faces = bumpy_sphere()
    result = export_surface(vertices, faces, colour, Frame(), ExportConfig(max_faces=400, texture_size=64),
                            tmp_path / "ball.glb")
    obj = results.import_generated(bpy.context.scene, "a ball", result.mesh.vertices, result.mesh.faces,
                                   result.mesh.uvs, result.png_path.read_bytes(), (0.0, 0.0, 0.0),
                                   normal_png=result.normal_map_path.read_bytes())
    nodes = obj.data.materials[0].node_tree.nodes
    normal = next(n for n in nodes if n.type == "NORMAL_MAP")
    assert normal.space == "TANGENT" and normal.uv_map == results.UV_LAYER
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Normal"].links[0].from_node == normal
    image = normal.inputs["Color"].links[0].from_node.image
    assert image.colorspace_settings.name == "Non-Color" and tuple(image.size) == (64, 64)
