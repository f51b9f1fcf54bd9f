"""Token mixers. Importing this package imports every module in it, and each module's
``@register_mixer`` classes register themselves: a new file here needs no other edit."""
import importlib
import pkgutil

from attnarena.mixers.base import Mixer

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Mixer"]
