"""A linearization recipe as plain data, recorded with its results."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from attnarena._validate import check_int, check_real

LOSSES = ("mse", "attention")


@dataclass
class LinearizeConfig:
    """A linearization recipe (plain data, recorded with its results).

    Attributes:
        mixer: the arena mechanism swapped in; options: its options.
        keep_softmax: layer indices left as softmax attention (a hybrid stack).
        keep_softmax_auto: a number k of layers to keep softmax, chosen after stage 1 as
            those whose transfer loss stayed largest (0: none chosen this way).
        transfer_steps / finetune_steps: optimizer steps of stage 1 / stage 2 (0 skips it).
        loss: stage 1's objective, "mse" (attention outputs) or "attention" (Hedgehog's
            cross-entropy on attention weights; mechanisms with ``distillation_loss``).
        transfer_lr / finetune_lr: Adam learning rates.
        lora_rank: rank of the stage-2 adapters.
        batch_size, max_length: training batches of sentences, truncated to max_length tokens.
        seed: sentence order and initialization.
    """

    mixer: str = "hedgehog"
    options: dict = field(default_factory=dict)
    keep_softmax: tuple = ()
    keep_softmax_auto: int = 0
    transfer_steps: int = 300
    finetune_steps: int = 300
    loss: str = "mse"
    transfer_lr: float = 1e-2
    finetune_lr: float = 1e-3
    lora_rank: int = 8
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.mixer, str):
            raise TypeError(f"mixer must be a name, got {self.mixer!r}")
        self.keep_softmax = tuple(sorted(set(self.keep_softmax)))
        for name in ("transfer_steps", "finetune_steps"):
            check_int(getattr(self, name), name, minimum=0)
        for name in ("lora_rank", "batch_size", "max_length"):
            check_int(getattr(self, name), name)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.keep_softmax_auto, "keep_softmax_auto", minimum=0)
        if self.keep_softmax_auto and self.keep_softmax:
            raise ValueError("give layers to keep softmax (keep_softmax) or a number of them to "
                             "choose (keep_softmax_auto), not both")
        for name in ("transfer_lr", "finetune_lr"):
            check_real(getattr(self, name), name, low_open=True)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "keep_softmax": list(self.keep_softmax)}
