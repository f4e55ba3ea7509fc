"""Colours have a space: glTF's vertex colours are linear, and reach references and textures as the display
values a viewer shows (sRGB-encoded), within one 8-bit level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from shapes import face_texels, write_linear_coloured_glb

from backend.cameras import Cameras
from backend.colour import linear_to_srgb, srgb_to_linear
from backend.guidance.target import TargetGuidance
from backend.mesh import load_mesh

REPO = Path(__file__).resolve().parents[1]
BALL = (0.2, 0.6, 0.8)  # linear, as the file holds it
SHOWN = np.array([124, 203, 231])  # what a glTF viewer shows for it: round(255 · sRGB(linear))
DARK, DARK_SHOWN = (0.002, 0.01, 0.05), np.array([7, 25, 63])  # 8-bit linear levels would show (13, 26, 63)


def ball_glb(path: Path, linear: tuple[float, float, float], subdivisions: int = 2) -> Path:
    ball = trimesh.creation.icosphere(subdivisions)
    write_linear_coloured_glb(path, ball.vertices, ball.faces, np.tile(linear, (len(ball.vertices), 1)))
    return path


def test_the_transfer_function_round_trips_and_matches_the_standard():
    levels = np.arange(256) / 255.0
    assert np.abs(linear_to_srgb(srgb_to_linear(levels)) - levels).max() < 1e-6
    np.testing.assert_array_equal(np.round(linear_to_srgb(BALL) * 255), SHOWN)


@pytest.mark.parametrize(("linear", "shown"), [(BALL, SHOWN), (DARK, DARK_SHOWN)], ids=["ball", "dark"])
def test_linear_vertex_colours_load_as_a_viewer_shows_them(tmp_path, linear, shown):
    mesh = load_mesh(ball_glb(tmp_path / "ball.glb", linear))
    levels = mesh.vertex_colors * 255
    print(f"COLOR_0 {linear} loads as {np.round(levels[0], 2)}; a viewer shows {shown}")
    assert np.abs(levels - shown).max() <= 0.5 + 1e-4  # read at full precision, then rounded once


def test_a_linear_base_colour_factor_loads_as_a_viewer_shows_it(tmp_path):
    box = trimesh.creation.box()
    material = trimesh.visual.material.PBRMaterial(baseColorFactor=[0.2, 0.6, 0.8, 1.0])
    box.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((8, 2)), material=material)
    box.export(tmp_path / "box.glb")
    levels = load_mesh(tmp_path / "box.glb").vertex_colors * 255
    assert np.abs(levels - SHOWN).max() <= 1.5  # trimesh keeps a factor as 8-bit linear levels


def test_the_target_prior_renders_what_a_viewer_shows(tmp_path):
    guidance = TargetGuidance.from_file(ball_glb(tmp_path / "ball.glb", BALL))
    image = guidance.render_rgb(Cameras.orbit(20.0, 30.0, 2.5, 40.0), 32)[0].permute(1, 2, 0).numpy() * 255
    centre = image[12:20, 12:20].reshape(-1, 3)
    print(f"target render of COLOR_0 {BALL}: {np.round(centre.mean(0), 2)} (a viewer: {SHOWN})")
    assert np.abs(centre - SHOWN).max() <= 1.0


@pytest.mark.slow
def test_partial_paint_of_a_vertex_coloured_mesh_keeps_the_shown_colours(tmp_path):
    """Through the command line, as a user runs it: the ball is its own `target:`, a cap of it is painted.
    The unselected faces keep the colour a viewer shows within one level; the painted cap heads for it,
    not for the linear values read as display ones (what the prior rendered before colours had a space)."""
    path = ball_glb(tmp_path / "ball.glb", BALL)
    mesh = load_mesh(path)
    cap = np.flatnonzero(mesh.vertices[mesh.faces].mean(1)[:, 2] > 0.4)
    (tmp_path / "faces.txt").write_text(" ".join(map(str, cap)))
    (tmp_path / "quick.json").write_text(json.dumps({"resolution": 32, "iters": 150, "lr": 5e-2,
                                                     "texture_size": 128, "loop": {"checkpoint_every": 0}}))
    out = tmp_path / "out" / "ball.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "paint", "--mesh", str(path), "--prompt", "a ball",
                           "--guidance", f"target:{path}", "--device", "cpu", "--faces", str(tmp_path / "faces.txt"),
                           "--config", str(tmp_path / "quick.json"), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    texture = np.asarray(Image.open(out.with_suffix(".png")).convert("RGB")).astype(int)
    painted = trimesh.load(out, force="mesh")
    from backend.mesh import Mesh

    result = Mesh(np.asarray(painted.vertices, np.float32), np.asarray(painted.faces),
                  uvs=np.asarray(painted.visual.uv, np.float32))
    rest = face_texels(result, 128, np.setdiff1d(np.arange(len(mesh.faces)), cap), erode=1)
    inner = face_texels(result, 128, cap, erode=3)
    kept_error = np.abs(texture[rest] - SHOWN).max()
    cap_colour = np.median(texture[inner], axis=0)
    unencoded = np.round(np.asarray(BALL) * 255)
    print(f"unselected texels: at most {kept_error} levels from {SHOWN} over {rest.sum()} texels; painted cap's "
          f"median {cap_colour} over {inner.sum()} texels (150 steps)")
    assert kept_error <= 1
    assert np.linalg.norm(cap_colour - SHOWN) < np.linalg.norm(cap_colour - unencoded) / 2
