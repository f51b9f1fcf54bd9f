"""Token mixers. Importing this package registers every mechanism."""
from attnarena.mixers import linear, performer, softmax  # noqa: F401  (registration)
from attnarena.mixers.base import Mixer

__all__ = ["Mixer"]
