"""LatentForge backend: text + sketch to textured 3D assets with score distillation."""

__version__ = "0.1.0"
