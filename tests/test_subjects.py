"""Subjects: what compression and linearization see of a model, for each adapter."""
import pytest
import torch
from torch import nn

from attnarena.models import (ArenaSubject, CausalLM, DualEncoder, EncoderClassifier,
                              SequenceRegressor)
from attnarena.subject import Subject, subject_of

WORKFLOW = ("describe", "compress_data", "quality", "timing_cells", "source_config",
            "identity", "check_takes_over", "swap_attention", "is_swapped",
            "attention_module", "capture_attention", "attention_output",
            "adapted_projections", "linearize_batches", "finetune_loss")


@pytest.mark.parametrize("build, depth", [
    (lambda: CausalLM(50, dim=16, depth=3, heads=2, mixer="gla"), 3),
    (lambda: EncoderClassifier(4, vocab_size=20, dim=16, depth=2, heads=4, mixer="softmax"), 2),
    (lambda: DualEncoder(2, vocab_size=20, dim=16, depth=2, heads=2, mixer="linear"), 2),
    (lambda: SequenceRegressor(input_dim=3, dim=16, depth=1, heads=2, mixer="softmax"), 1),
])
def test_every_arena_backbone_is_an_arena_subject(build, depth):
    model = build()
    subject = subject_of(model)
    assert isinstance(subject, ArenaSubject) and subject.model is model
    blocks = subject.blocks()
    assert [b.index for b in blocks] == list(range(depth))
    for block in blocks:
        mixer = block.module.mixer
        assert block.width == 16 and block.attention.heads == mixer.heads
        assert block.attention.mechanism == mixer.info.name
        assert block.attention.name == f"{block.name}.mixer"
        assert block.mlp == (block.module.mlp[0], block.module.mlp[-1])
    heads = set(subject.linear_layers()) - set(subject.linear_layers(include_output=False))
    assert heads == ({"head"} if isinstance(getattr(model, "head", None), nn.Linear) else set())


def test_a_model_no_adapter_knows_is_one_line():
    with pytest.raises(ValueError, match="no subject adapter knows a Linear .*take: arena"):
        subject_of(nn.Linear(2, 2))


def test_heads_are_pruned_through_the_subject():
    model = EncoderClassifier(4, vocab_size=20, dim=16, depth=1, heads=4, mixer="softmax")
    attention = subject_of(model).blocks()[0].attention
    assert attention.prune is not None and not attention.unprunable
    attention.prune([0, 2])
    assert model.blocks[0].mixer.heads == 2 and model.blocks[0].mixer.q_proj.out_features == 8
    x = torch.randint(0, 20, (2, 7))
    assert model(x).shape == (2, 4)
    mamba2 = subject_of(EncoderClassifier(4, vocab_size=20, dim=16, depth=1, heads=2,
                                          mixer="mamba2")).blocks()[0].attention
    assert mamba2.prune is None and "all heads together" in mamba2.unprunable


@pytest.mark.parametrize("adapter", ["arena", "encoder"])
def test_each_adapter_gives_everything_the_workflows_ask(adapter):
    if adapter == "arena":
        cls = ArenaSubject
    else:
        pytest.importorskip("transformers")
        from attnarena.pretrained import EncoderSubject as cls
    missing = [name for name in WORKFLOW if not callable(getattr(cls, name, None))]
    assert issubclass(cls, Subject) and not missing, missing


def test_a_bert_encoder_is_an_encoder_subject():
    pytest.importorskip("transformers")
    from attnarena.pretrained import EncoderSubject, load_pretrained

    encoder = load_pretrained("minilm")
    subject = subject_of(encoder.model)
    assert isinstance(subject, EncoderSubject)
    blocks = subject.blocks()
    assert len(blocks) == 6 and all(b.attention.heads == 12 and b.width == 384 for b in blocks)
    assert blocks[0].mlp[0].out_features == 1536 and blocks[0].attention.mechanism == "softmax"
    ids, keep = encoder.tokenize(["A sentence."])
    assert torch.equal(subject.output(encoder.model(input_ids=ids, attention_mask=keep)),
                       encoder(ids, keep))
