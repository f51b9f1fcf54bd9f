"""Compression recipes over a subject (``attnarena.subject``): quantization, pruning,
low-rank factorization, distillation; each method a config dataclass applied by one
function (the ``compress`` extra adds torchao's methods and ONNX Runtime's)."""
# The method modules register themselves with the recipe registry on import, the subject
# adapters with ``subject_of``.
from attnarena import models, pretrained  # noqa: F401
from attnarena.compress import (distill, lowrank, mixed, ort, prune, quantize,  # noqa: F401
                                repquant)
from attnarena.compress.recipe import (CompressData, apply_recipe, list_methods, make_step,
                                       recipe_from_dicts)

__all__ = ["CompressData", "apply_recipe", "list_methods", "make_step", "recipe_from_dicts"]
