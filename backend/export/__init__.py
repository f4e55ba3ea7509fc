"""Turning an optimised field into a textured asset: marching cubes, UV atlas, texture bake, GLB + PNG."""

from backend.export.config import ExportConfig
from backend.export.glb import write_glb
from backend.export.pipeline import ExportResult, export_asset

__all__ = ["ExportConfig", "ExportResult", "export_asset", "write_glb"]
