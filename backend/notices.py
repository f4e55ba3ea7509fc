"""Third-party notices that are not the user's business, kept out of the output; real warnings still show.

Each entry is a library logger and the phrases of the notices it logs that a LatentForge user cannot act
on: transformers announcing fallbacks for image processors this backend never uses, and diffusers advising
an optional package for faster loading. Filters go on those exact loggers, so nothing else is hidden.
"""

from __future__ import annotations

import logging

NOTICES: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
    "diffusers.models.modeling_utils": ("`accelerate` was not found",),
    "diffusers.pipelines.pipeline_utils": ("`accelerate` was not found",),
}


class _Drop(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.phrases)


def quiet_third_party() -> None:
    """Install the filters (idempotent; cheap: it imports none of the libraries)."""
    for name, phrases in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(phrases))
