"""The arena's own backbones as a subject of compression and linearization (see
``attnarena.subject``): their blocks are ``Block``s, each with an arena mixer and an MLP,
and the output head is the linear layer named ``head``. Built with the task the model was
trained on and the run's resolved config, the subject also gives the workflows their data
(the task's batches), loss and quality measure (the task's own), and what is timed."""
from __future__ import annotations

import torch
from torch import nn

from attnarena.mixers.heads import prune_mixer_heads, why_unprunable
from attnarena.mixers.takeover import PROJECTIONS, mixer_taking_over
from attnarena.models.block import Block as ArenaBlock
from attnarena.models.trunk import Backbone
from attnarena.registry import mixer_info
from attnarena.seeds import batch_seed, eval_seed
from attnarena.subject import (Attention, Batches, Block, CompressData, Subject,
                               register_subject)


@register_subject
class ArenaSubject(Subject):
    """A model built of the arena's ``Block``s (every backbone of ``attnarena.models``).

    ``task`` (optional) is the task it was trained on: the workflows read its data, loss
    and quality measure from it."""

    kind = "arena"
    builds_students = True

    def __init__(self, model: nn.Module, task=None, run: dict | None = None):
        super().__init__(model)
        self.task, self.run = task, run

    @classmethod
    def accepts(cls, model) -> bool:
        return isinstance(model, nn.Module) and any(
            isinstance(m, ArenaBlock) for m in model.modules())

    def _arena_blocks(self) -> list[tuple[str, ArenaBlock]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ArenaBlock)]

    def blocks(self) -> list[Block]:
        out = []
        for index, (name, block) in enumerate(self._arena_blocks()):
            mixer = block.mixer
            width = block.down.in_features if isinstance(block.down, nn.Linear) else mixer.dim
            why = why_unprunable(mixer)
            attention = Attention(
                name=f"{name}.mixer", mechanism=mixer.info.name,
                projections={p: getattr(mixer, p) for p in PROJECTIONS
                             if isinstance(getattr(mixer, p, None), nn.Linear)},
                output=f"{name}.mixer.o_proj", heads=mixer.heads,
                kv_heads=getattr(mixer, "kv_heads", mixer.heads), causal=mixer.causal,
                prune=None if why else (lambda kept, m=mixer: prune_mixer_heads(m, kept)),
                unprunable=why)
            mlp = (block.mlp[0], block.mlp[-1]) if block.mlp is not None else None
            out.append(Block(index, name, block, width, attention, mlp))
        return out

    def output_layers(self) -> set[str]:
        return {n for n, m in self.model.named_children() if n.startswith("head")}

    def output(self, result) -> torch.Tensor:
        return result[0] if isinstance(result, tuple) else result

    # -- linearization --------------------------------------------------------------------

    def attention_module(self, index: int):
        """The mixer of block ``index`` (what a swap replaces, and what stage 1 trains)."""
        return self._arena_blocks()[index][1].mixer

    def swap_attention(self, index: int, mechanism: str, options: dict) -> nn.Module:
        """Put ``mechanism`` in block ``index``, taking over its mixer's q, k, v and output
        projections; returns the new mixer."""
        block = self._arena_blocks()[index][1]
        old = block.mixer
        if not all(isinstance(getattr(old, n, None), nn.Linear) for n in PROJECTIONS):
            raise ValueError(f"block {index} holds {old.info.name}, which has no query, key, "
                             "value and output projections to hand over")
        block.mixer, _ = mixer_taking_over(mechanism, {n: getattr(old, n) for n in PROJECTIONS},
                                           heads=old.heads, causal=old.causal, options=options)
        return block.mixer

    def adapted_projections(self, index: int) -> list[str]:
        """Qualified names of the projections stage 2's adapters train in block ``index``."""
        name = self._arena_blocks()[index][0]
        return [f"{name}.mixer.{p}" for p in PROJECTIONS]

    def is_swapped(self, index: int, original: str = "softmax") -> bool:
        return self.attention_module(index).info.name != original

    def check_takes_over(self, mechanism: str) -> None:
        if not mixer_info(mechanism).reuses_attention_weights:
            raise ValueError(f"mixer {mechanism!r} cannot reuse the trained query, key, value "
                             "and output weights (it has no such projections)")

    def capture_attention(self, indices, batch) -> dict[int, tuple]:
        """{index: (input, mask, output after the output projection)} of the mixers at
        ``indices`` on one batch of the task."""
        captured, handles = {}, []
        for index in indices:
            def hook(module, args, kwargs, output, index=index):
                captured[index] = (args[0], kwargs.get("mask"), output)
            handles.append(self.attention_module(index).register_forward_hook(
                hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.task.score(self.model, batch, stats=False)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def attention_output(self, index: int, inputs, mask) -> torch.Tensor:
        """Block ``index``'s attention on ``inputs`` (as captured), after the output
        projection."""
        return self.attention_module(index)(inputs, mask=mask)

    finetunes_in_train_mode = True  # stage 2 trains as the run trained (dropout on)

    def linearize_batches(self, stage: str, config, device) -> Batches:
        """The run's own training batches: stage 1 from step 0, stage 2 where stage 1's
        left off (the same budget, fresh data)."""
        steps = config.transfer_steps if stage == "transfer" else config.finetune_steps
        offset = 0 if stage == "transfer" else 10**6
        size = self.default_batch
        return Batches(steps, lambda step: self.batch(size, offset + step, device))

    def finetune_loss(self, teacher, batch) -> torch.Tensor:
        """Stage 2's loss: the task's own."""
        return self.loss(self.model, batch)

    # -- the workflows --------------------------------------------------------------------

    def _needs_task(self):
        if self.task is None or self.run is None:
            raise ValueError("this arena model was given without its task and run config; "
                             "build ArenaSubject(model, task, run) to compress or linearize it")

    @property
    def seed(self) -> int:
        self._needs_task()
        return self.run["seed"]

    def linearize_fields(self) -> dict:
        """The teacher run's seed, and what it computed apart from its seed: rows of teachers
        that differ only by seed are one setting over seeds in the tables."""
        self._needs_task()
        return {"teacher_seed": self.seed,
                "teacher_setting": {k: v for k, v in self.run.items()
                                    if k not in ("seed", "device")}}

    @property
    def default_batch(self) -> int:
        self._needs_task()
        return self.run["train"]["batch"]

    def describe(self) -> dict:
        """The fields every compression row of this model carries."""
        self._needs_task()
        return {"task": self.run["task"], "mixer": self.run["mixer"],
                "mixer_options": self.run["mixer_options"], "metric": self.task.metric,
                "higher_is_better": self.task.higher_is_better}

    def batch(self, size: int, step: int, device, split: str = "train") -> dict:
        """Training batch ``step`` of the run's seed (the run's own batch order)."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, step))
        return {k: v.to(device) for k, v in self.task.batch(size, generator, split).items()}

    def loss(self, model, batch) -> torch.Tensor:
        return self.task.score(model, batch, stats=False)[0]

    def compress_data(self, calibration: int, batch: int, device) -> CompressData:
        """Calibration and training batches of the task, its loss, a frozen teacher, and a
        builder of students of other mechanisms."""
        run = self.run

        def build(mixer, options, overrides):
            settings = {**run, "mixer": mixer, "mixer_options": dict(options),
                        "model": {**run["model"], **overrides}}
            return self.task.build_model(mixer, settings["mixer_options"],
                                         settings["model"]), settings

        return CompressData(
            calibration=[self.batch(batch, 3 * 10**6 + i, device) for i in range(calibration)],
            loss=self.loss, train_batch=lambda step: self.batch(batch, 4 * 10**6 + step, device),
            teacher=self.frozen_copy().model, build=build, seed=self.seed)

    def quality(self, teacher=None, device="cpu") -> dict:
        """The task's metric on its fixed test examples: {"test": value}."""
        self._needs_task()
        examples = self.run["train"]["eval_examples"]
        seed = eval_seed(self.seed, "test")
        return {"test": self.task.evaluate(self.model, examples, seed, device, "test")["metric"]}

    def timing_cells(self, device, batch_sizes=(1, 32), length_factors=(1, 4)) -> dict:
        """What is timed: the whole model on test batches at the task's length (("model",
        batch)), and its stack of blocks on (batch, factor * L, width) inputs (("blocks",
        factor, batch): the part every compression method changes; a longer input would
        overrun learned position tables)."""
        self._needs_task()
        model, task, seed = self.model.eval(), self.task, 0
        cells = {}
        for size in batch_sizes:
            batch = {k: v.to(device) for k, v in task.batch(
                size, torch.Generator().manual_seed(seed), "test").items()}
            cells[("model", str(size))] = torch.no_grad()(
                lambda batch=batch: task.score(model, batch, stats=False))
        blocks = self.blocks()
        if not blocks or not isinstance(model, Backbone):
            return cells
        width = blocks[0].width
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        for factor in length_factors:
            for size in batch_sizes:
                x = torch.randn(size, factor * task.sequence_length, width, device=device,
                                dtype=dtype, generator=torch.Generator(device).manual_seed(seed))
                cells[("blocks", str(factor), str(size))] = torch.no_grad()(
                    lambda x=x: model.forward_blocks(x))
        return cells

    @property
    def timed_length(self) -> int:
        return self.task.sequence_length

    def source_config(self) -> dict:
        """What a saved compressed model records to rebuild this one (the run config)."""
        return self.run
