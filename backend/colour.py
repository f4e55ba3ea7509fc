"""Colour spaces: the sRGB transfer function, where a colour crosses between linear and display values.

Inside the backend every colour is a display value (sRGB-encoded, what a viewer shows and what a texture's
bytes hold): renders, textures, `Mesh.vertex_colors`. Linear colours are converted once, where they come
in: glTF's `COLOR_0` and `baseColorFactor` when a file is loaded (`backend.mesh`), and the linear colours
a paint submit carries (Blender's colour attributes, base colours and float images) when the service reads
them (`backend.tasks.appearance`). Nothing leaves the backend as a linear colour: results are textures.
"""

from __future__ import annotations

import numpy as np


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of linear values, clipped to [0, 1] first (float32 out)."""
    x = np.clip(np.asarray(linear, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """The inverse of `linear_to_srgb` (float32 out)."""
    x = np.clip(np.asarray(srgb, np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def to_bytes(display: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] → uint8 levels, rounded."""
    return np.round(np.clip(np.asarray(display, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
