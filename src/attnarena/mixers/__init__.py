"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import (deltanet, gla, linear, mamba, performer,  # noqa: F401
                              retention, softmax)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
