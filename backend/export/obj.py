"""OBJ + MTL of levels of detail with their polygons: the format beside the GLB that keeps quads as quads.

Positions are welded (one `v` per point, so UV seams do not cut the surface apart), UVs are per corner
(`vt` per seam-split vertex), and each level is an object `<name>_LOD<k>` with its own material naming its
colour texture (`map_Kd`) and tangent-space normal map (`map_Bump`, which Blender's importer wires as one).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from backend.export.levels import lod_name
from backend.export.polygons import Polygons
from backend.mesh import Mesh, to_file_frame


def obj_bytes(name: str, meshes: Sequence[Mesh], polygons: Sequence[Polygons | None], mtl_file: str) -> bytes:
    """The OBJ of `meshes` (internal z-up frame, per-vertex UVs) with their `polygons` (their triangles where
    None); material `<name>_LOD<k>` of file `mtl_file` for level k."""
    out = io.StringIO()
    out.write(f"# LatentForge\nmtllib {mtl_file}\n")
    v_base = vt_base = 0
    for k, (mesh, faces) in enumerate(zip(meshes, polygons, strict=True)):
        faces = faces if faces is not None else Polygons.of_triangles(mesh.faces)
        welded, point = np.unique(mesh.vertices, axis=0, return_inverse=True)
        point = point.reshape(-1)
        out.write(f"o {lod_name(name, k)}\n")
        np.savetxt(out, to_file_frame(welded), fmt="v %.7g %.7g %.7g")
        np.savetxt(out, mesh.uvs, fmt="vt %.7g %.7g")
        out.write(f"usemtl {lod_name(name, k)}\ns 1\n")
        corners = faces.corners
        tokens = [f"{p}/{t}" for p, t in zip((point[corners] + 1 + v_base).tolist(),
                                               (corners + 1 + vt_base).tolist(), strict=True)]
        for start, size in zip(faces.starts.tolist(), faces.sizes.tolist(), strict=True):
            out.write("f " + " ".join(tokens[start:start + size]) + "\n")
        v_base += len(welded)
        vt_base += len(mesh.uvs)
    return out.getvalue().encode()


def mtl_bytes(name: str, textures: Sequence[str], normal_maps: Sequence[str]) -> bytes:
    """Materials `<name>_LOD<k>`: colour texture file `textures[k]`, normal map file `normal_maps[k]`."""
    lines = []
    for k, (texture, normal) in enumerate(zip(textures, normal_maps, strict=True)):
        lines += [f"newmtl {lod_name(name, k)}", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0", "d 1", "illum 1",
                  f"map_Kd {texture}", f"map_Bump {normal}", ""]
    return "\n".join(lines).encode()
