"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import (deltanet, gla, linear, mamba, mlstm,  # noqa: F401
                              performer, retention, s4d, softmax)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
