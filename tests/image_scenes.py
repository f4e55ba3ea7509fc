"""Scenes and images for the reference-image tests: a known mesh's picture from the reference view, and a
box with a smaller one hidden right behind it from that view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from backend.mesh import Frame, Mesh
from backend.reference import ImageConfig
from backend.render.mesh_render import render_mesh

# one colour per axis-aligned face direction (−x, +x, −y, +y, −z, +z)
PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.95, 0.85, 0.1], [0.2, 0.2, 0.9], [0.9, 0.3, 0.8],
                    [0.1, 0.8, 0.85]], np.float32)


def image_of(mesh: Mesh, frame: Frame, view: ImageConfig, size: int = 128) -> np.ndarray:
    """RGBA uint8 [size, size, 4]: `mesh`'s vertex colours seen from the reference view (the mesh placed in the
    unit volume by `frame`, as the job places it), unlit, its coverage as alpha."""
    vertices = torch.as_tensor(frame.to_unit(mesh.vertices))
    colour, coverage = render_mesh(vertices, torch.as_tensor(mesh.faces), view.camera(), size,
                                   vertex_colors=torch.as_tensor(mesh.vertex_colors), supersample=4)
    rgb = (colour[0] / coverage[0].clamp(min=1e-6)).permute(1, 2, 0).clamp(0, 1).numpy()
    return np.dstack([np.round(rgb * 255), np.round(coverage[0].numpy() * 255)]).astype(np.uint8)


def coloured(mesh: Mesh, face_colours: np.ndarray) -> Mesh:
    """`mesh` (each face with its own three vertices) with one colour per face [F, 3]."""
    return mesh.copy_with(vertex_colors=np.repeat(np.asarray(face_colours, np.float32), 3, axis=0))


def split_box(extents: tuple[float, float, float], centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents)
    vertices = np.asarray(box.vertices, np.float32)[np.asarray(box.faces)].reshape(-1, 3) + centre
    return vertices.astype(np.float32), np.arange(len(vertices)).reshape(-1, 3)


@dataclass
class BoxesBehind:
    mesh: Mesh  # every face with its own vertices, no colours
    frame: Frame  # where a job puts it in the unit volume
    colours: np.ndarray  # [F, 3] the known colouring: by face direction, the hidden box white
    seen: np.ndarray  # faces of the front box turned squarely to the view (cos > 0.6: its front)
    turned: np.ndarray  # faces of the front box turned to the view (cos > 0.3: its front, right and top)
    hidden: np.ndarray  # the front box's faces turned away, and every face of the box behind it


def boxes_behind(view: ImageConfig) -> BoxesBehind:
    """A 1 × 0.6 × 0.8 box, and a 0.3 box 0.9 behind its centre along the reference view's axis: wholly hidden
    from the view, but inside the front box's outline in the image."""
    position = view.camera().position[0].numpy()
    towards = position / np.linalg.norm(position)
    front_v, front_f = split_box((1.0, 0.6, 0.8), np.zeros(3, np.float32))
    back_v, back_f = split_box((0.3, 0.3, 0.3), (-0.9 * towards).astype(np.float32))
    vertices = np.concatenate([front_v, back_v])
    faces = np.concatenate([front_f, back_f + len(front_v)])
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    axis = np.argmax(np.abs(normals), 1)
    colours = PALETTE[2 * axis + (normals[np.arange(len(faces)), axis] > 0)]
    colours[len(front_f):] = 0.95
    cos = normals[:len(front_f)] @ towards
    hidden = np.concatenate([np.flatnonzero(cos < 0), np.arange(len(front_f), len(faces))])
    return BoxesBehind(Mesh(vertices, faces), Frame.fit(vertices), colours, np.flatnonzero(cos > 0.6),
                       np.flatnonzero(cos > 0.3), hidden)


def inside_pixels(image: np.ndarray, size: int, erode: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image's RGB [3, size, size], the pixels wholly inside its mask at size², `erode` pixels in)."""
    from scipy.ndimage import binary_erosion

    from backend.reference import ReferenceImage, mask_inside

    rgb, mask = ReferenceImage.from_pixels(image).tensors(size)
    inside = mask_inside(mask, 1).numpy()
    return rgb, torch.as_tensor(binary_erosion(inside, iterations=erode) if erode else inside)


def psnr_inside(render: torch.Tensor, image: np.ndarray, erode: int = 0) -> float:
    """PSNR (dB) of an RGB render [3, S, S] against the image [H, W, 4] over the pixels inside its mask."""
    rgb, inside = inside_pixels(image, render.shape[-1], erode)
    error = ((render - rgb) ** 2).mean(0)[inside]
    return float(10 * torch.log10(1 / error.mean().clamp(min=1e-12)))


def asset_render(result: Mesh, texture: np.ndarray, frame: Frame, view: ImageConfig, size: int = 64) -> torch.Tensor:
    """A textured result [3, size, size] seen from the reference view over white (placed in the unit volume by
    `frame`, as the job placed it)."""
    vertices = torch.as_tensor(frame.to_unit(result.vertices))
    colour, coverage = render_mesh(vertices, torch.as_tensor(result.faces), view.camera(), size,
                                   uvs=torch.as_tensor(result.uvs),
                                   texture=torch.as_tensor(texture).permute(2, 0, 1).float() / 255.0, supersample=4)
    return colour[0] + (1 - coverage[0])
