"""Latent-Paint: known-answer colours, untouched geometry, UV handling, inputs and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from shapes import BLUE, RED, two_tone_box

from backend.config import merge
from backend.errors import ConfigError, InputError
from backend.guidance.target import TargetGuidance
from backend.mesh import Mesh, load_mesh, to_file_frame, validate_mesh
from backend.tasks.paint import PaintConfig, paint, uv_mapped

REPO = Path(__file__).resolve().parents[1]
QUICK = {"resolution": 32, "texture_size": 256, "iters": 300, "lr": 5e-2, "loop": {"checkpoint_every": 0}}


def face_colours(result, faces_of_interest: np.ndarray) -> np.ndarray:
    """The painted texture at each face's centroid UV."""
    uv = result.mesh.uvs[result.mesh.faces[faces_of_interest]].mean(1)
    h, w, _ = result.texture.shape
    rows = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    return result.texture[rows, cols].astype(np.float32) / 255.0


@pytest.mark.slow
def test_paint_recovers_known_colours_and_keeps_the_vertices(tmp_path):
    target = two_tone_box()
    bare = target.copy_with(vertex_colors=None)
    result = paint(merge(PaintConfig(prompt="a two-tone box"), QUICK), TargetGuidance(target), bare,
                   tmp_path / "box.glb")
    assert np.array_equal(result.mesh.vertices, bare.vertices[result.vertex_map])
    # every output face is an input face, in the same order
    assert np.array_equal(result.vertex_map[result.mesh.faces], bare.faces)
    v, f = result.mesh.vertices, result.mesh.faces
    centroid = v[f].mean(1)
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    # faces away from the red/blue seam, on the sides the cameras see (elevation ≥ −10°: not the underside)
    seen = (np.abs(centroid[:, 2] - 0.5) > 0.1) & (normal[:, 2] > -0.5)
    expected = np.where((centroid[seen, 2] > 0.5)[:, None], RED, BLUE)
    mse = float(((face_colours(result, np.flatnonzero(seen)) - expected) ** 2).mean())
    psnr = 10 * np.log10(1 / mse)
    print(f"paint known answer: PSNR {psnr:.1f} dB over {seen.sum()} faces")
    assert psnr >= 20
    glb = trimesh.load(result.glb_path, force="mesh")
    assert np.allclose(glb.vertices, to_file_frame(result.mesh.vertices), atol=1e-6)
    assert np.allclose(glb.visual.uv, result.mesh.uvs, atol=1e-6)


def test_own_uvs_are_kept_and_missing_or_flat_ones_unwrapped():
    plane = trimesh.creation.box((1, 1, 1))
    v = np.asarray(plane.vertices, np.float32)
    uvs = (v[:, :2] + 0.5) * 0.9 + 0.05
    own = Mesh(v, np.asarray(plane.faces), uvs=uvs.astype(np.float32))
    kept, vmap = uv_mapped(own, 256)
    assert np.array_equal(kept.uvs, own.uvs) and np.array_equal(vmap, np.arange(len(v)))
    flat = own.copy_with(uvs=np.zeros_like(own.uvs))
    unwrapped, vmap = uv_mapped(flat, 256)
    assert unwrapped.uvs.min() >= 0 and unwrapped.uvs.max() <= 1
    assert np.array_equal(unwrapped.vertices, v[vmap])


@pytest.mark.parametrize(("low", "high", "message"), [
    (0, 3, r"face \d+ of the paint mesh crosses UDIM tiles"),  # random UVs: faces across tile borders
    (-2, -1, "left of or below the first UDIM tile"),
    (10, 11, "UDIM tiles end at u = 10"),
])
def test_uvs_no_udim_tile_holds_are_refused_and_nothing_is_written(tmp_path, low, high, message):
    box = two_tone_box()
    tiled = box.copy_with(vertex_colors=None, uvs=np.random.default_rng(0).uniform(low, high, (len(box.vertices), 2))
                          .astype(np.float32))
    with pytest.raises(InputError, match=message):
        paint(merge(PaintConfig(prompt="x"), QUICK), TargetGuidance(box), tiled, tmp_path / "x.glb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("setting", "message"), [
    ({"lr_anneal": 1.5}, r"lr_anneal must be a fraction in \[0, 1\], got 1.5"),
    ({"lr_anneal": -0.1}, r"lr_anneal must be a fraction in \[0, 1\], got -0.1"),
    ({"supersample": 0}, r"supersample must be in \[1, 8\], got 0"),
    ({"supersample": 16}, r"supersample must be in \[1, 8\], got 16"),
    ({"smoothness": -0.01}, r"smoothness must be 0 or more, got -0.01"),
    ({"smoothness": float("nan")}, r"smoothness must be a finite number, got nan"),
    ({"background_lr": 0.0}, r"lr, finetune_lr and background_lr must be positive"),
])
def test_out_of_range_paint_settings_are_refused_and_nothing_is_written(setting, message, tmp_path):
    box = two_tone_box()
    with pytest.raises(ConfigError, match=message):
        paint(merge(PaintConfig(prompt="x"), {**QUICK, **setting}), TargetGuidance(box),
              box.copy_with(vertex_colors=None), tmp_path / "x.glb")
    assert list(tmp_path.iterdir()) == []


def test_five_million_faces_are_refused_with_the_limit_named():
    faces = np.zeros((5_000_000, 3), np.int64)
    with pytest.raises(InputError, match="5,000,000 faces, over the limit of 2,000,000"):
        validate_mesh(Mesh(np.zeros((3, 3), np.float32), faces), "paint mesh")


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_paint_inputs_load_from_every_format(suffix, tmp_path):
    box = trimesh.creation.box((1, 2, 3))
    path = tmp_path / f"box{suffix}"
    box.export(path)
    mesh = load_mesh(path, "paint mesh")
    assert len(mesh.faces) == 12
    assert np.allclose(np.sort(mesh.vertices.max(0) - mesh.vertices.min(0)), [1, 2, 3], atol=1e-5)


def test_paint_cli_end_to_end_on_a_tiny_sd(tiny_sd_dir, tmp_path):
    box = trimesh.creation.icosphere(2)
    mesh_path = tmp_path / "ball.obj"
    box.export(mesh_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"resolution": 16, "iters": 4, "texture_size": 64, "finetune_iters": 2,
                                  "finetune_resolution": 32}))
    out = tmp_path / "ball.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "paint", "--mesh", str(mesh_path), "--prompt", "a ball",
                           "--model", str(tiny_sd_dir), "--device", "cpu", "--config", str(config),
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "paint" in proc.stderr and "rgb_finetune" in proc.stderr
    glb = trimesh.load(out, force="mesh")
    assert len(glb.faces) == len(box.faces)
    assert np.asarray(glb.visual.material.baseColorTexture).shape[:2] == (64, 64)
    assert out.with_suffix(".png").is_file()
