"""Triangle meshes: the arrays every part passes around, loading from files, validation and frames.

Internal frame: z up (Blender's). Mesh files (glTF by its spec; OBJ and PLY as Blender and most tools
write them) are y up, so `load_mesh` turns them to z up and `to_file_frame` turns results back: an
asset written for a file input has that file's own coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from backend.catalog import MAX_FACES
from backend.colour import linear_to_srgb, to_bytes
from backend.errors import InputError

_Y_UP_TO_Z_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)  # (x, y, z) → (x, −z, y)


@dataclass
class Mesh:
    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray | None = None  # [V, 2] float32, per vertex (seams split vertices)
    vertex_colors: np.ndarray | None = None  # [V, 3] float32 in [0, 1], display (sRGB-encoded) values
    texture: np.ndarray | None = None  # [H, W, 3] uint8, sampled with `uvs` (v up, glTF-style flip handled)

    def copy_with(self, **changes: object) -> Mesh:
        return replace(self, **changes)


@dataclass(frozen=True)
class Frame:
    """Maps an input's coordinates into the optimisation's unit volume and back.

    The unit volume's front faces −Y (Blender's front view, where azimuth 0° cameras look from): `yaw` is
    where the asset's front faces in the world, in degrees counter-clockwise about +Z from −Y (90: +X), so
    view prompts follow the asset's own front and not the world's.
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0  # unit = R(−yaw)·(world − center) · scale
    yaw: float = 0.0

    @staticmethod
    def fit(vertices: np.ndarray, radius: float = 0.5, yaw: float = 0.0) -> Frame:
        """The frame that centres the bounding box and fits the vertices in a sphere of `radius`."""
        lo, hi = vertices.min(0), vertices.max(0)
        center = (lo + hi) / 2
        extent = float(np.linalg.norm(vertices - center, axis=1).max())
        if not np.isfinite(extent) or extent <= 0:
            raise InputError("the mesh has no extent (all vertices coincide)", "check the selection")
        return Frame(tuple(float(c) for c in center), radius / extent, yaw)

    def turned(self, yaw: float) -> Frame:
        """The same placement with the asset's front facing `yaw`."""
        return replace(self, yaw=float(yaw))

    def _rotation(self) -> np.ndarray:
        """R(−yaw) about +Z: world directions → unit-volume directions."""
        a = np.deg2rad(-self.yaw)
        return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        shifted = (np.asarray(points, np.float64) - np.asarray(self.center)) * self.scale
        return (shifted @ self._rotation().T).astype(np.float32) if self.yaw else shifted.astype(np.float32)

    def from_unit(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        turned = points @ self._rotation() if self.yaw else points
        return (turned / self.scale + np.asarray(self.center)).astype(np.float32)


def validate_mesh(mesh: Mesh, what: str = "mesh", max_faces: int = MAX_FACES) -> Mesh:
    """Check a mesh's arrays and return it with canonical dtypes, or raise `InputError`."""
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise InputError(f"the {what} has no vertices (expected an array of shape [V, 3], got {v.shape})")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise InputError(f"the {what} has no triangles (expected faces of shape [F, 3], got {f.shape})",
                         "select mesh objects with faces, not points or curves")
    if len(f) > max_faces:
        raise InputError(f"the {what} has {len(f):,} faces, over the limit of {max_faces:,}",
                         "decimate it first (Blender: Decimate modifier)")
    if not np.isfinite(v).all():
        raise InputError(f"the {what} has NaN or infinite vertex coordinates", "fix or delete those vertices")
    if not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= len(v):
        raise InputError(f"the {what}'s faces index vertices that do not exist")
    v = v.astype(np.float32)
    f = f.astype(np.int64)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    area = np.linalg.norm(np.cross(e1.astype(np.float64), e2.astype(np.float64)), axis=1)
    if not (area > 1e-12 * max(1.0, float(np.abs(v).max()) ** 2)).any():
        raise InputError(f"every triangle of the {what} is degenerate (zero area)")
    uvs = mesh.uvs
    if uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float32)
        if uvs.shape != (len(v), 2) or not np.isfinite(uvs).all():
            raise InputError(f"the {what}'s UVs must be finite and one [u, v] per vertex")
    colors = mesh.vertex_colors
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float32)
        if colors.shape != (len(v), 3) or not np.isfinite(colors).all():
            raise InputError(f"the {what}'s vertex colours must be finite and one RGB per vertex")
    return Mesh(v, f, uvs, colors, mesh.texture)


def to_file_frame(vertices: np.ndarray) -> np.ndarray:
    """Internal z-up coordinates → y-up file coordinates."""
    return (vertices @ _Y_UP_TO_Z_UP).astype(np.float32)


def from_file_frame(vertices: np.ndarray) -> np.ndarray:
    """y-up file coordinates → internal z-up coordinates."""
    return (vertices @ _Y_UP_TO_Z_UP.T).astype(np.float32)


def load_mesh(path: str | Path, what: str = "mesh") -> Mesh:
    """Load a GLB/glTF, OBJ or PLY file (all its meshes merged) into the internal z-up frame.

    glTF's vertex colours and base-colour factors are linear (its spec); they become display values here,
    so a mesh renders with the colours a glTF viewer shows. OBJ and PLY colours are display values already.
    """
    import trimesh

    typed, path = str(path), Path(path)  # errors name the path as the user typed it
    if not path.is_file():
        raise InputError(f"the {what} file {typed!r} does not exist")
    if path.suffix.lower() not in (".glb", ".gltf", ".obj", ".ply"):
        raise InputError(f"the {what} file {typed!r} is not a mesh file", "use .glb, .gltf, .obj or .ply")
    gltf = path.suffix.lower() in (".glb", ".gltf")
    try:
        loaded, linear = _load_gltf(path) if gltf else (trimesh.load(path, process=False), {})
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise InputError(f"cannot read the {what} file {typed!r}: {exc}") from exc
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        if gltf:
            geoms = [_to_display(g, linear.get(g.metadata.get("name"))) for g in geoms]
        if len(geoms) > 1:
            # several meshes: colours survive only as vertex colours
            geoms = [_as_vertex_coloured(g) for g in geoms]
        loaded = trimesh.util.concatenate(geoms) if geoms else None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(f"the {what} file {typed!r} holds no triangles")
    return validate_mesh(_from_trimesh(loaded), what)


def _load_gltf(path: Path):  # noqa: ANN202 - (trimesh.Scene, {geometry name: [V, 3] linear float colours})
    """A glTF file as trimesh loads it, and each geometry's `COLOR_0` at full precision: trimesh would
    round the linear values to 8 bits, which dark colours cannot afford once they are encoded (up to 6 levels)."""
    import trimesh
    from trimesh.exchange.gltf import load_glb, load_gltf

    with path.open("rb") as fh:
        if path.suffix.lower() == ".glb":
            kwargs = load_glb(fh)
        else:
            kwargs = load_gltf(fh, resolver=trimesh.resolvers.FilePathResolver(path))
    linear = {}
    for name, geometry in kwargs.get("geometry", {}).items():
        geometry["process"] = False
        colors = geometry.get("vertex_colors")
        if colors is not None:
            colors = np.asarray(colors)
            scale = np.iinfo(colors.dtype).max if np.issubdtype(colors.dtype, np.integer) else 1.0
            linear[name] = colors[:, :3].astype(np.float64) / scale  # normalised integers or floats
    return trimesh.load(kwargs), linear


def _to_display(mesh, linear: np.ndarray | None):  # noqa: ANN001, ANN202 - trimesh types
    """A glTF geometry with its vertex colours and base-colour factor encoded as display (sRGB) values."""
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        if linear is None or len(linear) != len(mesh.vertices):
            linear = np.asarray(visual.vertex_colors[:, :3], np.float64) / 255.0
        alpha = np.asarray(visual.vertex_colors[:, 3:4], np.uint8)
        mesh = mesh.copy()
        mesh.visual.vertex_colors = np.concatenate([to_bytes(linear_to_srgb(linear)), alpha], axis=1)
    elif (factor := getattr(getattr(visual, "material", None), "baseColorFactor", None)) is not None:
        mesh = mesh.copy()
        # trimesh holds the factor as 8-bit linear levels
        encoded = to_bytes(linear_to_srgb(np.asarray(factor[:3], np.float64) / 255.0))
        mesh.visual.material.baseColorFactor = np.concatenate([encoded, np.asarray(factor[3:4], np.uint8)])
    return mesh


def _as_vertex_coloured(mesh):  # noqa: ANN001, ANN202 - trimesh types
    if getattr(mesh.visual, "kind", None) == "texture":
        mesh = mesh.copy()
        mesh.visual = mesh.visual.to_color()
    return mesh


def _from_trimesh(tm) -> Mesh:  # noqa: ANN001 - trimesh type
    vertices = from_file_frame(np.asarray(tm.vertices, dtype=np.float32))
    faces = np.asarray(tm.faces, dtype=np.int64)
    uvs = texture = colors = None
    visual = tm.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture" and getattr(visual, "uv", None) is not None and len(visual.uv) == len(vertices):
        uvs = np.asarray(visual.uv, dtype=np.float32)
        image = getattr(visual.material, "baseColorTexture", None) or getattr(visual.material, "image", None)
        if image is not None:
            texture = np.asarray(image.convert("RGB"), dtype=np.uint8)
        else:
            factor = getattr(visual.material, "baseColorFactor", None)
            if factor is not None:
                colors = np.tile(np.asarray(factor[:3], np.float32) / 255.0, (len(vertices), 1))
    elif kind == "vertex":
        colors = np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
    elif kind == "face":
        # per-face colours: split vertices so each face owns its corners
        fc = np.asarray(visual.face_colors[:, :3], dtype=np.float32) / 255.0
        vertices = vertices[faces].reshape(-1, 3)
        if uvs is not None:
            uvs = uvs[faces].reshape(-1, 2)
        colors = np.repeat(fc, 3, axis=0)
        faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
    return Mesh(vertices, faces, uvs, colors, texture)
