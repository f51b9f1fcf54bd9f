"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import (  # noqa: F401  (registration)
    agent, deltanet, dilated, gaam, gla, linear, log_linear, lowrank, mamba, mlstm, moh,
    parameter_free, performer, reformer, retention, s4d, sinkhorn, softmax, sparse, synthesizer)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
