"""A GLB of levels of detail: one node per level, named `<name>_LOD0` … under a node `<name>` (the naming
Unreal's and Unity's importers group into LODs), textures written once and shared between levels' materials.

Written here rather than through trimesh, which embeds a shared image once per material and has no way
to store tangents: each level carries the tangent frames its normal map was baked in (`TANGENT`), so a
renderer need not generate its own (glTF's fallback, MikkTSpace, differs from the bake's frames).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

from backend.export.glb import png_bytes
from backend.export.levels import Level, lod_name
from backend.export.normal_map import tangent_frames
from backend.mesh import to_file_frame, validate_mesh

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT = 5126, 5125
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT = 9729, 9987, 10497


class _Buffer:
    """The GLB's binary chunk, built one 4-byte-aligned buffer view at a time."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.views: list[dict] = []
        self.accessors: list[dict] = []
        self.size = 0

    def view(self, data: bytes, target: int | None = None) -> int:
        view = {"buffer": 0, "byteOffset": self.size, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        padded = data + b"\0" * (-len(data) % 4)
        self.parts.append(padded)
        self.size += len(padded)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int, bounds: bool = False) -> int:
        component = UNSIGNED_INT if array.dtype == np.uint32 else FLOAT
        accessor = {"bufferView": self.view(np.ascontiguousarray(array).tobytes(), target),
                    "componentType": component, "count": len(array), "type": kind}
        if bounds:
            accessor["min"], accessor["max"] = array.min(0).tolist(), array.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def lods_glb_bytes(name: str, levels: Sequence[Level], textures: Sequence[np.ndarray]) -> bytes:
    """The GLB of `levels` (meshes in the internal z-up frame, in their final placement), reading `textures`."""
    buffer = _Buffer()
    images = [{"bufferView": buffer.view(png_bytes(t)), "mimeType": "image/png"} for t in textures]
    normal_images = [{"bufferView": buffer.view(png_bytes(level.normal_map)), "mimeType": "image/png"}
                     for level in levels]
    all_images = images + normal_images
    gltf_textures = [{"source": i, "sampler": 0} for i in range(len(all_images))]
    meshes, materials, nodes = [], [], []
    for k, level in enumerate(levels):
        mesh = validate_mesh(level.mesh, "exported level of detail")
        normals, tangents, sign = tangent_frames(mesh)
        attributes = {
            "POSITION": buffer.accessor(to_file_frame(mesh.vertices).astype(np.float32), "VEC3", ARRAY_BUFFER,
                                        bounds=True),
            "NORMAL": buffer.accessor(to_file_frame(normals).astype(np.float32), "VEC3", ARRAY_BUFFER),
            "TANGENT": buffer.accessor(np.concatenate([to_file_frame(_some_tangent(tangents, normals)), sign[:, None]],
                                                      1).astype(np.float32), "VEC4", ARRAY_BUFFER),
            # glTF's v runs down the image, the mesh's up
            "TEXCOORD_0": buffer.accessor(np.stack([mesh.uvs[:, 0], 1 - mesh.uvs[:, 1]], 1).astype(np.float32),
                                          "VEC2", ARRAY_BUFFER),
        }
        indices = buffer.accessor(mesh.faces.astype(np.uint32).reshape(-1), "SCALAR", ELEMENT_ARRAY_BUFFER)
        materials.append({"name": lod_name(name, k), "doubleSided": False,
                          # glTF's default is fully metallic, which renders a baked albedo almost black
                          "pbrMetallicRoughness": {"baseColorTexture": {"index": level.texture},
                                                   "metallicFactor": 0.0, "roughnessFactor": 1.0},
                          "normalTexture": {"index": len(images) + k}})
        meshes.append({"name": lod_name(name, k),
                       "primitives": [{"attributes": attributes, "indices": indices, "material": k, "mode": 4}]})
        nodes.append({"name": lod_name(name, k), "mesh": k})
    nodes.append({"name": name, "children": list(range(len(levels)))})
    gltf = {"asset": {"version": "2.0", "generator": "LatentForge"}, "scene": 0,
            "scenes": [{"nodes": [len(nodes) - 1]}], "nodes": nodes, "meshes": meshes, "materials": materials,
            "textures": gltf_textures, "images": all_images,
            "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": REPEAT, "wrapT": REPEAT}],
            "accessors": buffer.accessors, "bufferViews": buffer.views, "buffers": [{"byteLength": buffer.size}]}
    return _glb(json.dumps(gltf, separators=(",", ":")).encode(), b"".join(buffer.parts))


def _some_tangent(tangents: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """`tangents`, with a unit vector perpendicular to the normal where a vertex's UVs gave none (glTF
    requires unit tangents)."""
    missing = np.linalg.norm(tangents, axis=1) < 0.5
    if missing.any():
        n = normals[missing]
        axis = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        t = axis - n * (axis * n).sum(1, keepdims=True)
        tangents = tangents.copy()
        tangents[missing] = t / np.linalg.norm(t, axis=1, keepdims=True)
    return tangents


def _glb(head: bytes, body: bytes) -> bytes:
    head += b" " * (-len(head) % 4)
    chunks = struct.pack("<I4s", len(head), b"JSON") + head + struct.pack("<I4s", len(body), b"BIN\0") + body
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks
