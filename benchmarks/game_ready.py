"""Game-ready export of the shipped toadstool: face budget, quads and levels of detail, measured per level.

The full surface is the mesh stage's own kind: marching tetrahedra of the toadstool's signed distance, with a
fine relief, on the DMTet grid (`--grid`, default 128, the mesh stage's default), coloured by the reference's
vertex colours. It is
exported through `export_surface` (the mesh stage's export) as triangles and as quads, each with `--lods`
levels from `--faces`, and every level is measured: faces, quad ratio, UV charts, Chamfer distance to the full
surface (as a fraction of its bounding-box diagonal) and the PSNR of its grey shading against the full
surface's from 8 views at 256² (`backend/export/shaded.py`), with and without its normal map. Writes JSON and,
with `--renders`, a Cycles strip of the levels (shaded, with a wireframe of their own faces).

    python benchmarks/game_ready.py --faces 5000 --lods 3 --out benchmarks/game-ready-cpu.json \\
        --renders benchmarks/renders/game-ready-lods.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import igl
import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from backend.examples import example_target
from backend.export.config import ExportConfig
from backend.export.from_mesh import export_surface
from backend.export.shaded import shading_psnr
from backend.isosurface import main_component
from backend.mesh import Frame, Mesh, load_mesh
from backend.render.marching_tets import TetGrid, marching_tets
from backend.surface_error import chamfer

RELIEF, RELIEF_FREQUENCY = 0.006, 45.0


def toadstool(grid: int) -> tuple[torch.Tensor, torch.Tensor, Frame, object]:
    """The toadstool's surface on a DMTet grid (unit frame), its frame and a colour field of its reference."""
    target = load_mesh(example_target(), "toadstool")
    frame = Frame.fit(target.vertices)
    unit = frame.to_unit(target.vertices).astype(np.float64)
    tets = TetGrid.build(grid, 1.0)
    points = tets.vertices.double().numpy()
    sdf, *_ = igl.signed_distance(points, unit, target.faces, sign_type=igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
    # a fine relief, under half a cell deep: the small detail a face budget loses and a normal map keeps
    sdf = sdf - RELIEF * np.prod(np.sin(RELIEF_FREQUENCY * points), axis=1)
    vertices, faces = marching_tets(tets, tets.vertices, torch.as_tensor(sdf, dtype=torch.float32))
    nearest, colours = cKDTree(unit), torch.as_tensor(target.vertex_colors, dtype=torch.float32)

    def colour(points: torch.Tensor) -> torch.Tensor:
        return colours[nearest.query(points.detach().cpu().numpy())[1]]
    return vertices, faces, frame, colour


def measure(result, full: Mesh) -> list[dict]:
    diagonal = float(np.linalg.norm(full.vertices.max(0) - full.vertices.min(0)))
    rows = []
    for k, level in enumerate(result.levels):
        rows.append({"lod": k, "faces": level.face_count, "triangles": len(level.mesh.faces),
                     "quad_ratio": None if level.polygons is None else round(level.polygons.quad_ratio, 4),
                     "charts": level.charts, "texture": level.texture,
                     "chamfer_of_diagonal": round(chamfer(level.mesh, full) / diagonal, 5),
                     "psnr_normal_map_db": round(shading_psnr(full, level.mesh, level.normal_map), 2),
                     "psnr_without_db": round(shading_psnr(full, level.mesh, None), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--faces", type=int, default=5000)
    parser.add_argument("--lods", type=int, default=3)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("game-ready.json"))
    parser.add_argument("--renders", type=Path, help="a PNG strip of the levels rendered with Cycles")
    args = parser.parse_args()
    vertices, faces, frame, colour = toadstool(args.grid)
    # what the export keeps of the surface: its largest connected part (the toadstool's has a few specks)
    surface = trimesh.Trimesh(vertices.numpy().astype(np.float64), faces.numpy())
    surface.update_faces(surface.nondegenerate_faces())
    parts = len(surface.split(only_watertight=False))
    surface = main_component(surface)
    full = Mesh(frame.from_unit(np.asarray(surface.vertices)), np.asarray(surface.faces))
    report: dict = {"full_faces": len(full.faces), "parts": parts, "grid": args.grid, "faces": args.faces,
                    "lods": args.lods}
    folder = Path(tempfile.mkdtemp(prefix="latentforge-game-ready-"))
    files: dict[str, Path] = {}
    for kind, quad in (("triangles", False), ("quads", True)):
        config = ExportConfig(max_faces=args.faces, lods=args.lods, quad=quad, texture_size=args.texture_size)
        start = time.perf_counter()
        result = export_surface(vertices, faces, colour, frame, config, folder / kind / "toadstool.glb")
        seconds = time.perf_counter() - start
        report[kind] = {"seconds": round(seconds, 1), "levels": measure(result, full)}
        files[kind] = result.obj_path or result.glb_path  # the quads' OBJ keeps them; the triangles' GLB
        print(f"{kind}: {seconds:.1f} s")
        for row in report[kind]["levels"]:
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.renders:
        render = Path(__file__).with_name("render_lods.py")
        subprocess.run([sys.executable, str(render), str(files["triangles"]), str(files["quads"]),
                        str(args.renders), "--lods", str(args.lods)], check=True)


if __name__ == "__main__":
    main()
