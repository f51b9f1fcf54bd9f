"""Backbones that take any registered mixer by name."""
from attnarena.models.block import MLP, Block
from attnarena.models.dual import DualEncoder
from attnarena.models.encoder import EncoderClassifier
from attnarena.models.lm import CausalLM
from attnarena.models.positions import POSITIONS
from attnarena.models.regressor import SequenceRegressor
from attnarena.models.seq2seq import DecoderBlock, EncoderDecoder
from attnarena.models.subject import ArenaSubject

__all__ = ["MLP", "POSITIONS", "ArenaSubject", "Block", "CausalLM", "DecoderBlock", "DualEncoder",
           "EncoderClassifier", "EncoderDecoder", "SequenceRegressor"]
