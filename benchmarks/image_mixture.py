"""The reference image's known answer, end to end through the command line, with Cycles pictures.

A mixture of two coloured boxes (a tall red tower and a flat blue slab) under a prompt that matches both
captions: only the image can say which comes back. For each box, its front render is the `--image` of a
`latentforge generate --guidance mixture:...`; the result is rendered with Cycles from the image's own view
and from three quarters, and the three are written side by side:

    python benchmarks/image_mixture.py --out-dir benchmarks/renders

writes `image-mixture-<box>.png` (the image | Cycles from the image's view | Cycles from 35° right, 20° up)
and prints each result's voxel IoU with both boxes and the CPU seconds it took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

BOXES = {"tower": ((0.7, 0.7, 1.4), (217, 31, 26)), "slab": ((1.4, 1.4, 0.6), (31, 64, 217))}
PROMPT = "a tall red tower or a flat blue slab"
SETTINGS = {  # a CPU schedule of a few minutes a run
    "resolution": 32, "optim": {"iters": 400, "lr": 5e-3}, "refine": {"iters": 0}, "mesh": {"iters": 0},
    "nerf": {"levels": 8, "log2_table_size": 14, "max_resolution": 256, "hidden_dim": 32}, "render": {"samples": 32},
    "export": {"grid_resolution": 96, "texture_size": 256, "max_faces": 20000, "density_threshold": 5.0},
    "loop": {"checkpoint_every": 0}, "objective": {"guidance_scale": 7.5},
}


def write_mixture(folder: Path) -> Path:
    """The two boxes as GLBs and the mixture file that captions them."""
    from backend.colour import srgb_to_linear
    from backend.mesh import to_file_frame

    tables = []
    for name, (extents, colour) in BOXES.items():
        box = trimesh.creation.box(extents).subdivide().subdivide()
        box.vertices = to_file_frame(np.asarray(box.vertices))  # glTF is y up; extents are x, y, z up
        linear = srgb_to_linear(np.asarray(colour) / 255.0)  # glTF's vertex colours are linear
        box.visual.vertex_colors = np.concatenate([np.round(np.tile(linear, (len(box.vertices), 1)) * 255),
                                                   np.full((len(box.vertices), 1), 255)], 1).astype(np.uint8)
        box.export(folder / f"{name}.glb")
        caption = "a tall red tower" if name == "tower" else "a flat blue slab"
        tables.append(f'[[target]]\nmesh = "{name}.glb"\ncaption = "{caption}"\n')
    path = folder / "mixture.toml"
    path.write_text("\n".join(tables))
    return path


def front_image(mixture: Path, name: str, size: int = 256) -> np.ndarray:
    """RGBA: box `name` from the default reference view (the front), placed as the job places it."""
    import torch

    from backend.guidance.mixture import MixtureGuidance
    from backend.reference import ImageConfig
    from backend.render.mesh_render import render_mesh

    guidance = MixtureGuidance.from_file(mixture)
    mesh = guidance.meshes[list(BOXES).index(name)]
    vertices = torch.as_tensor(guidance.suggested_frame().to_unit(mesh.vertices))
    colour, coverage = render_mesh(vertices, torch.as_tensor(mesh.faces), ImageConfig().camera(), size,
                                   vertex_colors=torch.as_tensor(mesh.vertex_colors), supersample=4)
    rgb = (colour[0] / coverage[0].clamp(min=1e-6)).permute(1, 2, 0).clamp(0, 1).numpy()
    return np.dstack([np.round(rgb * 255), np.round(coverage[0].numpy() * 255)]).astype(np.uint8)


def ious(glb: Path, mixture: Path) -> dict[str, float]:
    from backend.guidance.mixture import MixtureGuidance
    from backend.mesh import load_mesh

    sys.path.insert(0, str(REPO / "tests"))
    from shapes import set_iou, voxel_sets

    meshes = MixtureGuidance.from_file(mixture).meshes
    got, *boxes = voxel_sets([load_mesh(glb), *meshes], 64)
    return {name: round(set_iou(got, box), 3) for name, box in zip(BOXES, boxes, strict=True)}


def on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:].astype(np.float32) / 255.0
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="image-mixture-"))
    mixture = write_mixture(work)
    (work / "settings.json").write_text(json.dumps(SETTINGS))
    for name in BOXES:
        image_path = work / f"{name}-front.png"
        image = front_image(mixture, name, args.size)
        Image.fromarray(image).save(image_path)
        glb = work / f"{name}.result.glb"
        start = os.times()
        subprocess.run([sys.executable, "-m", "backend", "generate", "--guidance", f"mixture:{mixture}", "--prompt",
                        PROMPT, "--image", str(image_path), "--config", str(work / "settings.json"), "--device", "cpu",
                        "--out", str(glb)], cwd=REPO, check=True)
        end = os.times()
        cpu = end.children_user + end.children_system - start.children_user - start.children_system
        shots = []
        for azimuth, elevation in ((0.0, 0.0), (35.0, 20.0)):
            shot = work / f"{name}-{azimuth:.0f}.png"
            subprocess.run([sys.executable, str(REPO / "scripts" / "render_glb.py"), str(glb), str(shot), "--size",
                            str(args.size), "--samples", str(args.samples), "--azimuth", str(azimuth),
                            "--elevation", str(elevation)], cwd=REPO, check=True)
            shots.append(np.asarray(Image.open(shot).convert("RGB")))
        out = args.out_dir / f"image-mixture-{name}.png"
        Image.fromarray(np.concatenate([on_white(image), *shots], axis=1)).save(out)
        print(f"{name}'s front as the image: IoU {ious(glb, mixture)}, generate took {cpu:.0f} CPU s; "
              f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
