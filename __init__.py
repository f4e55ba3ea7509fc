"""Blender extension entry point: Blender loads the package beside blender_manifest.toml.

The add-on is imported when Blender registers it, not when this package is imported: pytest imports
this file too (the repository root is a package because of it), and that must not pull in bpy.
"""


def register() -> None:
    from .addon import register

    register()


def unregister() -> None:
    from .addon import unregister

    unregister()
