"""Errors a person can act on.

Every error the backend raises on purpose is a `LatentForgeError`: it carries a short machine code (the
service sends it on the wire), a message that says what went wrong, and a hint that says what to change.
The CLI prints them without a traceback.
"""

from __future__ import annotations


class LatentForgeError(Exception):
    code = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(LatentForgeError):
    """A setting is missing, of the wrong type, non-finite or out of range."""

    code = "bad_config"


class InputError(LatentForgeError):
    """A mesh, prompt or file given by the user cannot be used."""

    code = "bad_input"


class NoSurfaceError(InputError):
    """The export threshold leaves no surface: the field is below it everywhere, or above it everywhere.

    `details` holds what was measured (`peak_density`, `lowest_density`, `threshold`) and, when the field
    has any contrast, a `suggested_threshold` at which it does have a surface.
    """

    code = "no_surface"

    def __init__(self, message: str, hint: str | None, details: dict) -> None:
        super().__init__(message, hint)
        self.details = details


class ModelNotFoundError(LatentForgeError):
    """Diffusion weights are not on disk and cannot be downloaded."""

    code = "model_not_found"


class Cancelled(LatentForgeError):
    """The job was cancelled by its owner."""

    code = "cancelled"
