"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import (deltanet, gla, linear, lowrank, mamba, mlstm,  # noqa: F401
                              parameter_free, performer, retention, s4d, softmax, sparse)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
