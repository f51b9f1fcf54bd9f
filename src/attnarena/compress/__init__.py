"""Deployment tools: compression recipes (quantization, pruning, low-rank factorization,
distillation; each method a config dataclass applied by one function), low-rank adapters,
and linearization of pretrained softmax models by attention transfer (the ``pretrained``
extra for real pretrained models, ``compress`` for torchao)."""
# The method modules register themselves with the recipe registry on import.
from attnarena.compress import distill, lowrank, mixed, prune, quantize, repquant  # noqa: F401
from attnarena.compress.lora import LoRALinear, add_lora, merge_lora
from attnarena.compress.recipe import (apply_recipe, list_methods, make_step,
                                       recipe_from_dicts)

__all__ = ["LoRALinear", "add_lora", "apply_recipe", "list_methods", "make_step", "merge_lora",
           "recipe_from_dicts"]
