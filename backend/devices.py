"""Device names: checked as text when arguments are parsed, resolved with torch only when a job runs."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from backend.errors import LatentForgeError

if TYPE_CHECKING:
    import torch

DEVICES = "cpu, cuda, cuda:N, mps or auto"
_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_arg(text: str) -> str:
    """An argparse `type`: the name if it is a device this backend runs on, else a usage error (exit 2)."""
    name = text.strip().lower()
    if not _PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use {DEVICES}")
    return name


def pick_device(name: str) -> torch.device:
    """The torch device for a checked name; `auto` is CUDA when present, else the CPU."""
    import torch

    if not _PATTERN.fullmatch(name):
        raise LatentForgeError(f"unknown device {name!r}", f"use {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LatentForgeError(f"--device {name} was asked for but PyTorch sees no CUDA GPU",
                                   "use --device cpu, or install a CUDA build of PyTorch")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise LatentForgeError(f"--device {name} was asked for but PyTorch sees {torch.cuda.device_count()} "
                                   "CUDA GPU(s)", f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise LatentForgeError("--device mps was asked for but PyTorch sees no Apple GPU", "use --device cpu")
    return torch.device(name)
