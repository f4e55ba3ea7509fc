"""`--image-view` on the command line: a named view or AZIMUTH,ELEVATION in degrees, in the asset's own frame."""

from __future__ import annotations

import argparse

from backend.catalog import IMAGE_VIEWS


def view_arg(text: str) -> tuple[float, float]:
    """(azimuth, elevation) in degrees: one of `IMAGE_VIEWS` (front: the asset's −Y), or "AZ,EL"."""
    text = text.strip().lower()
    if text in IMAGE_VIEWS:
        return IMAGE_VIEWS[text]
    try:
        azimuth, elevation = (float(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a view ({', '.join(IMAGE_VIEWS)}) or AZIMUTH,ELEVATION "
                                         "in degrees, e.g. 30,15") from None
    if not (-90.0 <= elevation <= 90.0 and abs(azimuth) <= 360.0):
        raise argparse.ArgumentTypeError(f"{text!r}: the azimuth must be in [-360, 360] and the elevation in "
                                         "[-90, 90] degrees")
    return azimuth, elevation
