"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tiny_sd import TinySingleFile


# Tiny random Stable Diffusion models (see tiny_sd.py), built once per session. tiny_sd is imported
# inside the fixtures so that test modules that never use them do not pay for importing diffusers.


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder of a tiny random SD that predicts ε (seed 0)."""
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "epsilon", prediction_type="epsilon")


@pytest.fixture(scope="session")
def tiny_sd_vpred_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture and weights, with a scheduler that says the U-Net predicts v."""
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "v_prediction", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sd_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd_dir: Path) -> TinySingleFile:
    """`TinySingleFile(checkpoint, config, seed)`: an LDM-layout .safetensors plus its config folder."""
    from tiny_sd import save_tiny_single_file

    path = tmp_path_factory.mktemp("tiny-sd") / "tiny-sd-ldm.safetensors"
    return save_tiny_single_file(path, config=tiny_sd_dir)
