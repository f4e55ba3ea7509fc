"""A reference image: concept art or a photo of the asset, seen from a known view.

The image is a camera with a pose: `ImageConfig` puts it `radius` from the asset's centre, `fov` wide, at
`azimuth`/`elevation` in the asset's own frame (0, 0 is the front: the camera on the asset's −Y, Blender's
front view), looking at the centre with world up. The whole image is that camera's frame, square (a
wider or taller image is padded to a square with background), so where and how large the object sits in
the image is where and how large it sits in that view.

Its mask (which pixels are the object) is the alpha channel when the image has one that is not fully
opaque; else the background is every pixel connected to the image's border whose colour is within
`tolerance` of the border's colour in every channel (the border's colour is its median), so an object with
parts the background's colour inside its outline stays whole.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.cameras import Cameras
from backend.catalog import MAX_REFERENCE_SIDE
from backend.errors import ConfigError, InputError
from backend.latent import resize

FORMATS = ("PNG", "JPEG")  # what `--image` reads; the service's blob is a PNG
MIN_OBJECT = 0.001  # a mask covering less of the frame than this is empty
MIN_BACKGROUND = 0.02  # and one leaving less than this as background covers the whole frame
MASK_HINT = ("give the image a transparent background (alpha), or a plain background colour around the object "
             "that touches the image's border")


@dataclass
class ImageConfig:
    """Where the reference image was seen from, how its mask is made and how strongly it holds the view."""

    azimuth: float = 0.0  # degrees about +Z from the front (the asset's −Y); 90 is its right side
    elevation: float = 0.0  # degrees above the horizontal
    radius: float = 1.25  # the camera's distance from the asset's centre, in the unit volume (radius 0.5)
    fov: float = 50.0  # the image's vertical (and horizontal) field of view, degrees
    # without alpha: background is the border's colour within this much in every channel (0.1: 26 levels)
    tolerance: float = 0.1
    # generate: weights of the reference view's colour (inside the mask) and silhouette (opacity against the
    # mask) losses, per latent pixel the render covers, so they weigh the same against score distillation's
    # pull at every stage's render size
    rgb_weight: float = 10.0
    mask_weight: float = 10.0
    # generate with a sketch: the image's object is moved and scaled onto the sketch's outline in the view,
    # so the image and the sketch agree where the object is; false takes the image as framed
    fit_sketch: bool = True
    every: int = 1  # render the reference view every this many steps (its losses count that many times)
    ramp: float = 0.0  # the generate weights rise linearly from 0 over this fraction of the job (0: from the start)
    # paint: weight of the projected image on the texels the view sees, per latent texel
    texture_weight: float = 100.0

    def validate(self) -> None:
        for name in ("azimuth", "elevation", "radius", "fov", "tolerance", "rgb_weight", "mask_weight",
                     "texture_weight", "ramp"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"image.{name} must be a finite number, got {value!r}")
        if not -90.0 <= self.elevation <= 90.0:
            raise ConfigError(f"image.elevation must be in [-90, 90] degrees, got {self.elevation}")
        if not self.radius > 0.5:
            raise ConfigError(f"image.radius must be more than 0.5 (the asset's own radius), got {self.radius}")
        if not 1.0 <= self.fov <= 150.0:
            raise ConfigError(f"image.fov must be in [1, 150] degrees, got {self.fov}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"image.tolerance must be in [0, 1), got {self.tolerance}")
        if min(self.rgb_weight, self.mask_weight, self.texture_weight) < 0:
            raise ConfigError("image.rgb_weight, image.mask_weight and image.texture_weight must be ≥ 0")
        if not 0.0 <= self.ramp <= 1.0:
            raise ConfigError(f"image.ramp is a fraction of the job in [0, 1], got {self.ramp}")
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"image.every must be a whole number ≥ 1, got {self.every!r}")

    def camera(self, device: torch.device | str = "cpu") -> Cameras:
        """The reference view's camera (one), unlit, its render in albedo."""
        return Cameras.orbit(self.elevation, self.azimuth, self.radius, self.fov, device)


@dataclass
class ReferenceImage:
    """A reference image padded to a square: its colours and its mask."""

    rgb: np.ndarray  # [S, S, 3] uint8 display values (sRGB), row 0 at the top
    mask: np.ndarray  # [S, S] uint8: 255 object, 0 background (alpha's own levels in between)

    @property
    def size(self) -> int:
        return self.rgb.shape[0]

    @staticmethod
    def from_pixels(pixels: np.ndarray, tolerance: float = 0.1, what: str = "the image") -> ReferenceImage:
        """From RGB or RGBA uint8 pixels [H, W, 3|4]; `InputError` when its mask is empty or the whole frame."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or min(pixels.shape[:2]) < 1:
            raise InputError(f"{what} must be RGB or RGBA pixels [H, W, 3|4] of uint8, got {pixels.dtype} "
                             f"{list(pixels.shape)}")
        check_side(pixels.shape[1], pixels.shape[0], what)
        rgb = pixels[..., :3]
        alpha = pixels[..., 3] if pixels.shape[2] == 4 and pixels[..., 3].min() < 255 else None
        mask = alpha if alpha is not None else border_mask(rgb, tolerance)
        coverage = float(mask.mean()) / 255.0
        if coverage < MIN_OBJECT:
            how = "its alpha is transparent" if alpha is not None else "every pixel is the border's colour"
            raise InputError(f"{what}'s mask is empty: {how}, so nothing in it is the object", MASK_HINT)
        if coverage > 1.0 - MIN_BACKGROUND:
            how = "its alpha is opaque" if alpha is not None else \
                "too little of it is the colour of its border (a busy or missing background)"
            raise InputError(f"{what}'s mask covers the whole frame: {how} almost everywhere, so nothing shows "
                             "the object's outline", MASK_HINT)
        background = border_colour(rgb)
        return ReferenceImage(*pad_square(rgb, mask, background))

    def fitted(self, box: tuple[float, float, float, float]) -> ReferenceImage:
        """The image with its mask's bounding box moved onto `box` (top, left, bottom, right, as fractions of the
        frame) and scaled uniformly to the same area (the geometric mean of the two sides' ratios)."""
        from PIL import Image

        size = self.size
        rows, cols = np.nonzero(self.mask > 127)
        if rows.size == 0:
            return self
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        b_top, b_left, b_bottom, b_right = (v * size for v in box)
        scale = math.sqrt((b_bottom - b_top) * (b_right - b_left) / ((bottom - top) * (right - left)))
        if not (math.isfinite(scale) and scale > 0):
            return self
        # output pixel (x, y) reads the input at ((x − centre_out) / scale + centre_in)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        bx, by = (b_left + b_right) / 2, (b_top + b_bottom) / 2
        affine = (1 / scale, 0.0, cx - bx / scale, 0.0, 1 / scale, cy - by / scale)
        background = tuple(int(v) for v in border_colour(self.rgb))
        rgba = Image.fromarray(np.dstack([self.rgb, self.mask]))
        moved = np.array(rgba.transform((size, size), Image.AFFINE, affine, resample=Image.BILINEAR,
                                          fillcolor=(*background, 0)))
        return ReferenceImage(np.ascontiguousarray(moved[..., :3]), np.ascontiguousarray(moved[..., 3]))

    def tensors(self, size: int, device: torch.device | str = "cpu",
                backdrop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(RGB [3, size, size] in [0, 1] composited over `backdrop` [3] (default: as the image has it), mask
        [size, size] in [0, 1]), area-averaged (or bilinearly enlarged) to `size`²."""
        rgb = torch.as_tensor(self.rgb, device=device).permute(2, 0, 1).float() / 255.0
        mask = torch.as_tensor(self.mask, device=device).float() / 255.0
        if backdrop is not None:
            rgb = rgb * mask + (1 - mask) * backdrop.to(rgb).view(3, 1, 1)
        out = resize(torch.cat([rgb, mask[None]])[None], size)[0]
        return out[:3].clamp(0, 1), out[3].clamp(0, 1)


def check_side(width: int, height: int, what: str) -> None:
    if max(width, height) > MAX_REFERENCE_SIDE:
        raise InputError(f"{what} is {width}×{height} pixels, over the limit of {MAX_REFERENCE_SIDE} a side",
                         f"scale it down to {MAX_REFERENCE_SIDE} pixels or less a side")


def border_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour [3] of the image's outermost pixels."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(ring, axis=0).astype(np.uint8)


def border_mask(rgb: np.ndarray, tolerance: float) -> np.ndarray:
    """uint8 [H, W]: 0 where a pixel is background (the border's colour within `tolerance`, connected to the
    border), 255 elsewhere."""
    from scipy.ndimage import label

    close = (np.abs(rgb.astype(np.int16) - border_colour(rgb).astype(np.int16)).max(-1) <= tolerance * 255)
    labels, _ = label(close, structure=np.ones((3, 3), bool))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge[edge > 0])
    return np.where(background, 0, 255).astype(np.uint8)


def pad_square(rgb: np.ndarray, mask: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image centred on a square of `background` colour (outside it the mask is 0)."""
    h, w = mask.shape
    side = max(h, w)
    if h == w:
        return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.empty((side, side, 3), np.uint8)
    square[:] = background
    square[top:top + h, left:left + w] = rgb
    alpha = np.zeros((side, side), np.uint8)
    alpha[top:top + h, left:left + w] = mask
    return square, alpha


def decode_image(data: bytes, what: str = "the image", formats: tuple[str, ...] = FORMATS) -> np.ndarray:
    """Encoded image bytes → RGB or RGBA uint8 pixels [H, W, 3|4] (JPEG turned by its EXIF orientation);
    `InputError` for bytes that are not an image of `formats`, or one over the size limit, which is checked
    before the pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{what} is not an image ({' or '.join(formats)})",
                         "give a PNG or JPEG file" if len(formats) > 1 else "send PNG bytes") from exc
    if image.format not in formats:
        raise InputError(f"{what} is {image.format}, not {' or '.join(formats)}", "save it as PNG or JPEG first")
    check_side(image.width, image.height, what)
    try:
        image = ImageOps.exif_transpose(image)
        alpha = "A" in image.getbands() or "transparency" in image.info
        pixels = np.array(image.convert("RGBA" if alpha else "RGB"), np.uint8)  # writable, as torch wants it
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InputError(f"{what} cannot be decoded: {exc}", "save it again as PNG or JPEG") from exc
    return pixels


def read_image(path: str | Path, tolerance: float = 0.1) -> ReferenceImage:
    """`--image FILE`: a PNG or JPEG as a `ReferenceImage`, or `InputError` saying what to fix."""
    typed, path = str(path), Path(path)
    what = f"the image {typed!r}"
    if not path.is_file():
        raise InputError(f"{what} does not exist", "give the path of a PNG or JPEG file")
    return ReferenceImage.from_pixels(decode_image(path.read_bytes(), what), tolerance, what)


def png_of(image: ReferenceImage) -> bytes:
    """The image as an RGBA PNG, its mask as alpha: what the service's `image` blob carries."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.dstack([image.rgb, image.mask])).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE_INPUT = "image"  # a task's inputs: the reference image's pixels [H, W, 3|4] uint8, decoded from its PNG


def image_input(inputs: dict[str, np.ndarray], config: ImageConfig) -> ReferenceImage | None:
    """A task's reference image from its inputs (None without one), or `InputError` about its mask."""
    pixels = inputs.get(IMAGE_INPUT)
    return None if pixels is None else ReferenceImage.from_pixels(pixels, config.tolerance, "the reference image")


def mask_inside(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """[H/f, W/f] bool: the blocks of `factor`² pixels of `mask` [H, W] that lie wholly inside it."""
    if factor == 1:
        return mask >= 0.999
    return -F.max_pool2d(-mask[None, None], factor)[0, 0] >= 0.999
