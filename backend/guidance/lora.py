"""ε_φ for Stable Diffusion: a LoRA (peft) of the guidance's own U-Net, conditioned on the camera.

The LoRA's B matrices and the camera MLP's output layer start at zero, so ε_φ starts equal to the U-Net's
conditional prediction. The adapter lives inside the guidance's U-Net but is switched on only while ε_φ
runs, so the prior itself (`predict_noise`) stays the pretrained model. Only the LoRA's and the camera MLP's
weights are this module's state: a checkpoint holds a few megabytes, never the U-Net.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from peft import LoraConfig
from torch import nn

from backend.cameras import Cameras
from backend.guidance.base import Prompt, v_to_epsilon
from backend.guidance.trainable import camera_condition, camera_embedding


class AdaptablePrior(Protocol):
    """What a LoRA of a prior's U-Net needs from the prior (Stable Diffusion's guidance has it)."""

    unet: nn.Module
    device: torch.device
    prediction_type: str

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...

    def conditional_embeddings(self, prompt: Prompt, cameras: Cameras) -> torch.Tensor: ...

ADAPTER = "vsd"
# the attention projections, as diffusers' own LoRA training scripts adapt them
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


class LoRADenoiser(nn.Module):
    def __init__(self, guidance: AdaptablePrior, rank: int) -> None:
        super().__init__()
        unet = guidance.unet
        self._guidance = [guidance]  # in a list: the U-Net's frozen weights are not this module's state
        if ADAPTER in getattr(unet, "peft_config", {}):
            unet.delete_adapters(ADAPTER)  # a worker reuses its guidance: every job starts a fresh LoRA
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                    target_modules=TARGET_MODULES), adapter_name=ADAPTER)
        lora = {name: p for name, p in unet.named_parameters() if f".{ADAPTER}." in name}
        for p in lora.values():
            p.data = p.data.float()  # trained in float32 even under a float16 U-Net (peft casts inputs to it)
        # the same Parameter objects, so the optimiser and the checkpoint see the U-Net's adapter itself
        self.lora = nn.ParameterDict({name.replace(".", "__"): p for name, p in lora.items()})
        self._switch(False)
        self.camera = camera_embedding(unet.time_embedding.linear_2.out_features).to(guidance.device)
        nn.init.zeros_(self.camera.linear_2.weight)
        nn.init.zeros_(self.camera.linear_2.bias)

    def _switch(self, on: bool) -> None:
        unet = self._guidance[0].unet
        unet.enable_adapters() if on else unet.disable_adapters()
        # peft freezes a disabled adapter, but its gradient arrives at backward, after the switch back
        for p in self.lora.values():
            p.requires_grad_(True)

    @contextmanager
    def _adapted(self) -> Iterator[None]:
        unet = self._guidance[0].unet
        self._switch(True)
        unet.class_embedding = self.camera
        try:
            yield
        finally:
            unet.class_embedding = None
            self._switch(False)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras,
                keep_camera: torch.Tensor | None = None) -> torch.Tensor:
        guidance = self._guidance[0]
        unet = guidance.unet
        hidden = guidance.conditional_embeddings(prompt, cameras).to(unet.dtype)
        # float32 like the camera MLP: the U-Net casts the embedding to its own dtype
        cond = camera_condition(cameras, keep_camera).to(guidance.device)
        t = t.to(guidance.device).reshape(-1).expand(z_t.shape[0])
        with self._adapted():
            out = unet(z_t.to(guidance.device, unet.dtype), t, encoder_hidden_states=hidden,
                       class_labels=cond).sample.float()
        if guidance.prediction_type == "v_prediction":
            out = v_to_epsilon(out, z_t.float(), guidance.alphas_cumprod[t.long()])
        return out
