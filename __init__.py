"""Blender extension entry point: Blender loads the package beside blender_manifest.toml."""

from .addon import register, unregister

__all__ = ["register", "unregister"]
