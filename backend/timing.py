"""Where a step's time goes: exclusive wall time per named part, for the benchmark.

Parts nest (the U-Net runs inside the objective): a part's time excludes the parts inside it. On CUDA
every boundary synchronises, so a part's kernels count towards it and not towards whatever follows; that
slows the step a little, so the benchmark times whole steps separately, without a timer.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch

Timer = Callable[[str], AbstractContextManager[None]]  # timer("render") is a context that times one part


def untimed(_name: str) -> AbstractContextManager[None]:
    """The timer that times nothing (what the optimisation loop runs with)."""
    return contextlib.nullcontext()


class PartTimer:
    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)  # seconds per part since the last `take`
        self._stack: list[str] = []
        self._mark = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        now = self._now()
        if self._stack:
            self.totals[self._stack[-1]] += now - self._mark
        self._stack.append(name)
        self._mark = now
        try:
            yield
        finally:
            now = self._now()
            self.totals[self._stack.pop()] += now - self._mark
            self._mark = now

    def wrap(self, name: str, fn: Callable) -> Callable:
        """`fn`, timed as part `name` at each call."""

        def timed(*args: object, **kwargs: object) -> object:
            with self(name):
                return fn(*args, **kwargs)

        return timed

    def take(self) -> dict[str, float]:
        """Milliseconds per part since the last call; starts over."""
        totals = {k: v * 1e3 for k, v in self.totals.items()}
        self.totals.clear()
        return totals


def wall(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """fn()'s result and its wall seconds, its GPU work included and work queued before it left out."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start
