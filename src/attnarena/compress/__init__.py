"""Deployment tools: low-rank adapters and linearization of pretrained softmax models by
attention transfer (the ``pretrained`` extra for real pretrained models)."""
from attnarena.compress.lora import LoRALinear, add_lora, merge_lora

__all__ = ["LoRALinear", "add_lora", "merge_lora"]
