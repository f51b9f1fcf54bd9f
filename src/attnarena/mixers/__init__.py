"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import (agent, deltanet, gla, linear, lowrank, mamba, mlstm,  # noqa: F401
                              moh, parameter_free, performer, retention, s4d, softmax, sparse,
                              synthesizer)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
