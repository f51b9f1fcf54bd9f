"""Linearization of trained softmax models, on any subject (``attnarena.subject``): swap
softmax attention for a linear-time mechanism that takes over its projections, train the
new parameters by attention transfer, fine-tune with low-rank adapters, merge (Hedgehog,
LoLCATs). ``attnarena.arena.deploy.linearize`` measures the result and stores it."""
from attnarena import models, pretrained  # noqa: F401  (the subject adapters register)
from attnarena.linearize.config import LOSSES, LinearizeConfig
from attnarena.linearize.lora import LoRALinear, add_lora, merge_lora
from attnarena.linearize.stages import (attention_transfer, finetune, linearize_subject, swap,
                                        transfer_losses)

__all__ = ["LOSSES", "LinearizeConfig", "LoRALinear", "add_lora", "attention_transfer",
           "finetune", "linearize_subject", "merge_lora", "swap", "transfer_losses"]
