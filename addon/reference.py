"""The job's reference image: an Image Empty in the selection (its image and its facing), else the image or file
picked in the panel with the view typed there. Sent as a PNG (its alpha the mask) with its view.

An Image Empty (Add › Image › Reference) shows its image in its local XY plane, seen from its local +Z; the
camera that saw the image looks at the asset from that direction. It is turned into the asset's own frame
(the job's front, `geometry.front_of`): azimuth about +Z from the asset's front (−Y), elevation above the
horizontal; where the empty sits does not matter, only which way it faces.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..backend.catalog import MAX_REFERENCE_SIDE
from . import geometry

_previews = None  # bpy.utils.previews collection: thumbnails of picked files, without datablocks


@dataclass
class Reference:
    """What the job's reference image is, where it was seen from, and why it cannot be sent (if so)."""

    source: str  # for the panel: "Image Empty "Ref"", "image "concept.png"", "file concept.jpg"
    azimuth: float = 0.0  # degrees, in the asset's frame
    elevation: float = 0.0
    image: bpy.types.Image | None = None
    path: str | None = None
    problem: str | None = None

    def view_label(self) -> str:
        """Where the view is, in words: "Seen from the front", "Seen 30° right of the front, 10° above"."""
        az = (self.azimuth + 180.0) % 360.0 - 180.0
        if abs(self.elevation) >= 89.5:
            return "Seen from " + ("above" if self.elevation > 0 else "below")
        names = {0: "the front", 90: "the right", -90: "the left", 180: "the back", -180: "the back"}
        around = names.get(round(az)) if abs(az - round(az)) < 0.05 else None
        if around is None:
            side = "right" if az > 0 else "left"
            turn, of = (abs(az), "front") if abs(az) <= 90 else (180 - abs(az), "back")
            around = f"{turn:.0f}° {side} of the {of}"
            text = f"Seen {around}"
        else:
            text = f"Seen from {around}"
        if abs(self.elevation) >= 0.5:
            text += f", {abs(self.elevation):.0f}° {'above' if self.elevation > 0 else 'below'}"
        return text

    def thumbnail(self) -> int:
        """An icon id for the panel (0: none)."""
        if self.image is not None:
            preview = self.image.preview_ensure() if hasattr(self.image, "preview_ensure") else self.image.preview
            return preview.icon_id if preview is not None else 0
        if self.path and _previews is not None and Path(self.path).is_file():
            key = str(Path(self.path).resolve())
            item = _previews.get(key) or _previews.load(key, key, "IMAGE")
            return item.icon_id
        return 0


def facing(obj: bpy.types.Object, front_yaw: float) -> tuple[float, float]:
    """(azimuth, elevation) in degrees, in the asset's frame, of the direction an Image Empty's image faces."""
    toward = np.array(obj.matrix_world, dtype=np.float64)[:3, 2]
    length = float(np.linalg.norm(toward))
    if length < 1e-9:
        return 0.0, 0.0
    toward = toward / length
    yaw = math.radians(-front_yaw)  # world → the asset's frame, as the service's frame turns it
    x = math.cos(yaw) * toward[0] - math.sin(yaw) * toward[1]
    y = math.sin(yaw) * toward[0] + math.cos(yaw) * toward[1]
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, toward[2]))))
    azimuth = math.degrees(math.atan2(x, -y)) if math.hypot(x, y) > 1e-9 else 0.0
    return round(azimuth, 2) + 0.0, round(elevation, 2) + 0.0  # + 0.0: no −0


def _too_large(image: bpy.types.Image) -> str | None:
    w, h = image.size
    if max(w, h) > MAX_REFERENCE_SIDE:
        return (f"The image \"{image.name}\" is {w}×{h} pixels, over the limit of {MAX_REFERENCE_SIDE} a side: "
                "scale it down (Image › Resize)")
    if min(w, h) < 1:
        return f"The image \"{image.name}\" has no pixels: is its file missing? (Image › Reload)"
    return None


def reference_of(context: bpy.types.Context) -> Reference | None:
    """The job's reference image (None: the job has none), cheap enough for a button's poll."""
    settings = context.scene.latentforge
    empties = [o for o in context.selected_objects if geometry.is_image_empty(o)]
    if len(empties) > 1:
        return Reference("Image Empties", problem=f"{len(empties)} Image Empties are selected: select one, whose "
                                                   "image and facing give the job its reference image")
    if empties:
        empty = empties[0]
        azimuth, elevation = facing(empty, geometry.front_of(context))
        found = Reference(f"Image Empty \"{empty.name}\"", azimuth, elevation, image=empty.data)
        if empty.data is None:
            found.problem = (f"The Image Empty \"{empty.name}\" has no image: open one in its Object Data "
                             "properties, or leave it out of the selection")
        else:
            found.problem = _too_large(empty.data)
        return found
    if settings.image_source == "IMAGE":
        image = settings.reference_image
        if image is None:
            return Reference("image", problem="Pick the reference image (Reference › Image), or choose None")
        return Reference(f"image \"{image.name}\"", settings.image_azimuth, settings.image_elevation, image=image,
                         problem=_too_large(image))
    if settings.image_source == "FILE":
        path = bpy.path.abspath(settings.reference_file) if settings.reference_file else ""
        found = Reference(f"file {Path(path).name}" if path else "file", settings.image_azimuth,
                          settings.image_elevation, path=path)
        if not path:
            found.problem = "Pick the reference image's file (Reference › File), or choose None"
        elif not Path(path).is_file():
            found.problem = f"The reference image {path} does not exist: pick another file"
        return found
    return None


def image_png(reference: Reference) -> bytes:
    """The reference image as an RGBA PNG in display values (sRGB). A file is read through a temporary image
    datablock, removed again; raises ValueError with what to fix."""
    if reference.image is not None:
        return _png_of(reference.image)
    try:
        image = bpy.data.images.load(reference.path, check_existing=False)
    except RuntimeError as exc:
        raise ValueError(f"Cannot read {reference.path} as an image ({exc}): use a PNG or JPEG file") from None
    try:
        if 0 in tuple(image.size):  # Blender loads lazily: a file it cannot decode has no pixels
            raise ValueError(f"Cannot read {reference.path} as an image: use a PNG or JPEG file")
        if problem := _too_large(image):
            raise ValueError(problem.replace(f"\"{image.name}\"", Path(reference.path).name))
        return _png_of(image)
    finally:
        bpy.data.images.remove(image)


def _png_of(image: bpy.types.Image) -> bytes:
    w, h = image.size
    if problem := _too_large(image):
        raise ValueError(problem)
    channels = image.channels
    pixels = np.empty(w * h * channels, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(h, w, channels)[::-1]  # Blender's row 0 is the bottom
    colour = pixels[..., :max(1, channels - 1) if channels in (2, 4) else channels]
    rgb = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour[..., :3]
    alpha = pixels[..., -1:] if channels in (2, 4) else np.ones((h, w, 1), np.float32)
    if image.alpha_mode == "PREMUL":
        rgb = np.where(alpha > 0, rgb / np.maximum(alpha, 1e-6), rgb)
    if image.is_float or image.colorspace_settings.name != "sRGB":
        rgb = _linear_to_srgb(rgb)  # byte sRGB images hand out their bytes / 255; anything else is linear
    return png_rgba(np.round(np.clip(np.concatenate([rgb, alpha], -1), 0, 1) * 255).astype(np.uint8))


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def png_rgba(pixels: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of `pixels` [H, W, 4] uint8 (row 0 at the top), with the standard library alone."""
    h, w, _ = pixels.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * 4)], axis=1)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def register() -> None:
    global _previews
    import bpy.utils.previews

    _previews = bpy.utils.previews.new()


def unregister() -> None:
    global _previews
    if _previews is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_previews)
        _previews = None
