"""Host→device copies that never make the host wait for the GPU.

Every random draw in a job comes from one seeded CPU generator, so a job replays the same on any device.
A blocking copy of such a draw to the GPU (`.to("cuda")`) waits for all queued GPU work first: a host
sync in the middle of a step. A non-blocking copy from ordinary (pageable) memory is staged by the driver
at once, so it neither waits nor reads freed memory; the values are exactly those of a blocking copy.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, like: torch.Tensor | torch.device | str) -> torch.Tensor:
    """`tensor` on the device (and, given a tensor, with the dtype) of `like`, without a host sync."""
    if isinstance(like, torch.Tensor):
        return tensor.to(like.device, like.dtype, non_blocking=True)
    return tensor.to(like, non_blocking=True)
