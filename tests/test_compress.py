"""attnarena.compress: every method on tiny models, against the float model or its own
plain definition."""
import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attnarena.compress import fakequant as fq
from attnarena.compress.distill import DistillConfig, copy_teacher, distill, distill_loss
from attnarena.compress.lowrank import LowRankLinear, choose_rank
from attnarena.compress.mixed import assign_bits
from attnarena.compress.prune import head_groups, prune_mlp_neurons
from attnarena.compress.recipe import (
    CompressData,
    apply_recipe,
    make_step,
    model_output,
    recipe_from_dicts,
)
from attnarena.compress.repquant import fold_layernorms
from attnarena.mixers.heads import HEAD_LAYOUTS, prune_mixer_heads
from attnarena.models.block import Block
from attnarena.seeds import batch_seed
from attnarena.subject import subject_of
from attnarena.tasks import create_task
from conftest import make_mixer


def tiny(mixer="softmax", heads=2, mlp_dim=32, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    task = create_task("mqar", vocab=16, length=12, pairs=2)
    model = task.build_model(mixer, {}, {"dim": 16, "depth": 2, "heads": heads,
                                         "mlp_dim": mlp_dim})
    return task, model.to(dtype).eval()


def data_for(task, model, batches=2, size=8):
    def fetch(step):
        generator = torch.Generator().manual_seed(batch_seed(0, step))
        return task.batch(size, generator, "train")

    return CompressData(calibration=[fetch(10**6 + i) for i in range(batches)],
                        loss=lambda m, b: task.score(m, b, stats=False)[0],
                        train_batch=fetch, teacher=copy_teacher(model))


def outputs(model, data):
    return torch.cat([model_output(model, b, data.loss) for b in data.calibration])


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# -- torchao ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,tolerance", [("int8_weight", 0.03), ("int8_dynamic", 0.05),
                                            ("int4_weight", 0.3), ("int8_dynamic_int4", 0.3),
                                            ("float8_weight", 0.1)])
def test_torchao_outputs_stay_within_their_bit_width(name, tolerance):
    task, model = tiny()
    data = data_for(task, model)
    reference = outputs(model, data)
    options = {"group_size": 16} if "int4" in name else {}
    quantized, [report] = apply_recipe(copy.deepcopy(model), [make_step(name, options)], data,
                                       log=lambda m: None)
    error = relative_error(outputs(quantized, data), reference)
    assert error < tolerance
    assert error > 0  # something was quantized
    assert "blocks.0.mixer.q_proj" in report["quantized"]
    kept = {k["module"] for k in report["kept_float"]}
    assert "embed" in kept and "blocks.0.norm1" in kept  # listed, never silently skipped


def test_torchao_lists_layers_it_cannot_group():
    task, model = tiny()
    model.blocks[0].mlp[0] = nn.Linear(16, 24)
    model.blocks[0].mlp[3] = nn.Linear(24, 16)  # 24 inputs: not a multiple of 16
    data = data_for(task, model)
    _, [report] = apply_recipe(copy.deepcopy(model), [make_step("int4_weight",
                                                                {"group_size": 16})],
                               data, log=lambda m: None)
    refused = {k["module"]: k.get("reason") for k in report["kept_float"]}
    assert "not a multiple of group_size 16" in refused["blocks.0.mlp.3"]


# -- FP4 and integer fake quantization -----------------------------------------------------

weights = st.integers(0, 10**6).map(
    lambda s: torch.randn(6, 20, generator=torch.Generator().manual_seed(s))
    * torch.rand(6, 1, generator=torch.Generator().manual_seed(s + 1)) * 5)


@given(weights)
def test_fp4_weights_lie_on_the_e2m1_grid(weight):
    linear = nn.Linear(20, 6)
    linear.weight.data = weight
    layer = fq.QuantLinear.from_linear(linear, fmt="fp4", bits=4)
    values = layer.weight / layer.scale
    grid = fq.fp4_grid()
    assert torch.allclose(values[..., None].sub(grid).abs().min(-1).values,
                          torch.zeros_like(values), atol=1e-5)
    assert set(grid.tolist()) == {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5, -1.0, -1.5,
                                  -2.0, -3.0, -4.0, -6.0}


@given(weights, st.sampled_from([("fp4", 4), ("int", 2), ("int", 3), ("int", 8)]))
def test_scale_search_never_worse_than_the_naive_scale(weight, fmt_bits):
    fmt, bits = fmt_bits
    naive = fq.search_weight_scales(weight, fmt, bits, search=False)
    searched = fq.search_weight_scales(weight, fmt, bits, search=True)

    def error(scale):
        return ((fq.quantize(weight, scale, fmt, bits) - weight) ** 2).sum(1)
    assert (error(searched) <= error(naive) + 1e-6).all()


@given(st.integers(0, 10**6), st.sampled_from([("fp4", 4), ("int", 4), ("int", 8)]))
def test_activation_scale_search_never_worse_than_min_max(seed, fmt_bits):
    fmt, bits = fmt_bits
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 12, generator=g)
    inputs[:, 3] *= 20  # an outlier channel
    weight, bias = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    naive = fq.search_activation_scale(inputs, weight, bias, fmt, bits, search=False)
    searched = fq.search_activation_scale(inputs, weight, bias, fmt, bits, search=True)
    assert (fq.activation_error(inputs, weight, bias, searched, fmt, bits)
            <= fq.activation_error(inputs, weight, bias, naive, fmt, bits) + 1e-6)


@given(st.integers(1, 9), st.integers(1, 4), st.sampled_from([2, 3, 4, 8]))
def test_codes_pack_and_unpack(columns, rows, bits):
    codes = torch.randint(0, 2 ** min(bits, 4) if bits <= 4 else 256, (rows, columns),
                          dtype=torch.uint8)
    assert torch.equal(fq.unpack(fq.pack(codes, bits), bits, columns), codes)


def test_integer_weights_round_to_nearest_level():
    linear = nn.Linear(8, 3)
    layer = fq.QuantLinear.from_linear(linear, bits=4, search=False)
    scale = linear.weight.abs().amax(1, keepdim=True) / 7
    expected = (linear.weight / scale).round().clamp(-7, 7) * scale
    assert torch.allclose(layer.weight, expected, atol=1e-6)


def test_fake_activation_is_asymmetric_uniform():
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    scale = torch.tensor([4.0 / 255, -1.0])
    y = fq.fake_activation(x, scale, "int", 8)
    assert torch.allclose(y, x, atol=scale[0] / 2 + 1e-6)
    assert ((y - scale[1]) / scale[0]).sub(((y - scale[1]) / scale[0]).round()).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["fp4", "int_static"])
def test_fake_quantized_models_stay_close(name):
    task, model = tiny()
    data = data_for(task, model)
    reference = outputs(model, data)
    quantized, [report] = apply_recipe(copy.deepcopy(model), [make_step(name)], data,
                                       log=lambda m: None)
    error = relative_error(outputs(quantized, data), reference)
    assert 0 < error < (0.5 if name == "fp4" else 0.05)
    assert set(report["bits"]) == set(subject_of(model).linear_layers())


# -- RepQuant folding ---------------------------------------------------------------------

def test_folding_layernorm_scales_keeps_the_float_output():
    task, model = tiny(dtype=torch.float64)
    with torch.no_grad():  # give the norms' outputs outlier channels to fold
        for block in model.blocks:
            block.norm1.weight[3] = 25.0
            block.norm1.bias[5] = -4.0
    data = data_for(task, model)
    reference = outputs(model, data)
    folded = copy.deepcopy(model)
    report = fold_layernorms(folded, data)
    assert "blocks.0.norm1" in report["folded"]
    assert relative_error(outputs(folded, data), reference) < 1e-6
    assert not torch.equal(folded.blocks[0].norm1.weight, model.blocks[0].norm1.weight)


def test_folding_narrows_the_channel_ranges():
    task, model = tiny()
    with torch.no_grad():
        model.blocks[0].norm1.weight[3] = 25.0
    data = data_for(task, model)
    w8a8 = copy.deepcopy(model)
    rep = copy.deepcopy(model)
    reference = outputs(model, data)
    apply_recipe(w8a8, [make_step("int_static", {"act_bits": 4})], data, log=lambda m: None)
    apply_recipe(rep, [make_step("repquant", {"act_bits": 4})], data, log=lambda m: None)
    assert relative_error(outputs(rep, data), reference) < relative_error(
        outputs(w8a8, data), reference)


# -- mixed precision ----------------------------------------------------------------------

@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 500), min_size=1),
       st.floats(2.0, 8.0), st.integers(0, 10**6))
def test_mixed_precision_respects_the_budget(sizes, budget, seed):
    g = torch.Generator().manual_seed(seed)
    choices = [2, 4, 8]
    scores = {n: {b: float(torch.rand(1, generator=g)) / b for b in choices} for n in sizes}
    bits = assign_bits(scores, sizes, budget, choices)
    used = sum(bits[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert used <= budget + 1e-9
    assert set(bits.values()) <= set(choices)


def test_mixed_precision_narrows_the_least_sensitive_layer_first():
    scores = {"tough": {2: 5.0, 8: 0.0}, "easy": {2: 0.1, 8: 0.0}}
    assert assign_bits(scores, {"tough": 10, "easy": 10}, 5.0, [2, 8]) == {"tough": 8,
                                                                         "easy": 2}


def test_mixed_precision_end_to_end_meets_its_budget():
    task, model = tiny()
    data = data_for(task, model)
    _, [report] = apply_recipe(copy.deepcopy(model), [make_step("mixed", {"budget": 3.0})],
                               data, log=lambda m: None)
    assert report["mean_bits"] <= 3.0


def test_a_budget_no_assignment_meets_is_refused():
    with pytest.raises(ValueError, match="no assignment meets a budget of 1.5"):
        make_step("mixed", {"budget": 1.5})


# -- pruning ------------------------------------------------------------------------------

def _zero_heads(mixer, heads):
    width = mixer.o_proj.weight.shape[1] // mixer.heads
    with torch.no_grad():
        for h in heads:
            mixer.o_proj.weight[:, h * width:(h + 1) * width] = 0


@pytest.mark.parametrize("name,options", [(n, {"inner": "linear"} if n == "ttt_linear" else {})
                                          for n in sorted(HEAD_LAYOUTS)] + [
    ("softmax", {"gated": True}), ("softmax", {"clip_gamma": -0.05}),
    ("deltaproduct", {"gated": False, "householder": 3})])
def test_pruning_heads_equals_zeroing_their_outputs(name, options):
    from attnarena import mixer_info

    causal = "self" not in mixer_info(name).patterns
    mixer = make_mixer(name, causal=causal, dim=32, heads=4, **options)
    x = torch.randn(2, 12, 32)
    same = copy.deepcopy(mixer)
    prune_mixer_heads(same, [0, 1, 2, 3])
    torch.manual_seed(1)
    expected = mixer(x)
    torch.manual_seed(1)
    assert torch.equal(same(x), expected)  # pruning no head is the identity
    zeroed, pruned = copy.deepcopy(mixer), copy.deepcopy(mixer)
    _zero_heads(zeroed, [1, 3])
    prune_mixer_heads(pruned, [0, 2])
    assert pruned.heads == 2
    assert pruned.o_proj.weight.shape[1] == mixer.o_proj.weight.shape[1] // 2
    torch.manual_seed(1)
    expected = zeroed(x)
    torch.manual_seed(1)
    assert torch.allclose(pruned(x), expected, atol=1e-5)


def test_prune_heads_removes_the_least_important_half():
    task, model = tiny(heads=4)
    data = data_for(task, model)
    pruned, [report] = apply_recipe(copy.deepcopy(model), [make_step("prune_heads")], data,
                                    log=lambda m: None)
    assert report["heads_before"] == 8 and report["heads_after"] == 4
    params = sum(p.numel() for p in pruned.parameters())
    assert params < sum(p.numel() for p in model.parameters())
    for name, kept in report["kept"].items():
        scores = torch.tensor(report["importance"][name])
        normalized = scores / scores.norm()
        dropped = [i for i in range(4) if i not in kept]
        if dropped and kept:
            assert normalized[dropped].max() <= normalized[kept].max()


def test_pruning_mlp_neurons_equals_zeroing_them():
    block = Block(16, "softmax", heads=2, mlp_dim=32).eval()
    x = torch.randn(2, 5, 16)
    zeroed, pruned = copy.deepcopy(block), copy.deepcopy(block)
    drop = [0, 3, 7, 8]
    with torch.no_grad():
        zeroed.mlp[-1].weight[:, drop] = 0
    prune_mlp_neurons(pruned.mlp[0], pruned.mlp[-1], [i for i in range(32) if i not in drop])
    assert pruned.mlp[0].out_features == 28
    assert torch.allclose(pruned(x), zeroed(x), atol=1e-6)


def test_magnitude_pruning_reaches_its_sparsity():
    task, model = tiny()
    data = data_for(task, model)
    pruned, [report] = apply_recipe(copy.deepcopy(model),
                                    [make_step("magnitude", {"sparsity": 0.6})], data,
                                    log=lambda m: None)
    assert abs(report["sparsity"] - 0.6) < 0.01
    assert not any(hasattr(m, "weight_orig") for m in pruned.modules())  # made permanent


def test_head_pruning_needs_heads():
    task, model = tiny(heads=1)
    with pytest.raises(ValueError, match="no attention layer with more than one head"):
        head_groups(model)
    _, model = tiny(mixer="mamba2")
    with pytest.raises(ValueError, match="does not know how mamba2 lays out its heads"):
        head_groups(model)
    # an option decides it: TTT-Linear's released inner model normalizes all heads at once
    _, model = tiny(mixer="ttt_linear")
    with pytest.raises(ValueError, match="all heads together"):
        head_groups(model)
    _, model = tiny(mixer="ttt_linear(inner=linear)")
    assert head_groups(model)


# -- low rank -----------------------------------------------------------------------------

def test_svd_at_full_rank_reproduces_the_layer():
    linear = nn.Linear(12, 7)
    x = torch.randn(3, 12)
    assert torch.allclose(LowRankLinear.from_linear(linear, 7)(x), linear(x), atol=1e-5)


@given(st.floats(0.05, 1.0))
def test_rank_keeps_the_asked_energy(energy):
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.1])
    rank = choose_rank(s, (5, 5), energy=energy)
    power = s ** 2 / (s ** 2).sum()
    assert power[:rank].sum() >= energy - 1e-9
    assert rank == 1 or power[:rank - 1].sum() < energy


def test_lowrank_halves_the_linear_parameters():
    task, model = tiny()
    data = data_for(task, model)
    _, [report] = apply_recipe(copy.deepcopy(model), [make_step("lowrank", {"keep": 0.5})],
                               data, log=lambda m: None)
    assert report["weights_after"] <= 0.55 * report["weights_before"]


# -- distillation -------------------------------------------------------------------------

def test_distillation_lowers_the_students_loss():
    task, model = tiny()
    data = data_for(task, model)
    torch.manual_seed(0)
    student, _ = apply_recipe(copy.deepcopy(model), [make_step("lowrank", {"keep": 0.3})],
                              data, log=lambda m: None)
    config = DistillConfig(steps=30, lr=3e-3)
    batch = data.train_batch(10**5)

    def loss_now():
        return float(distill_loss(student, data.teacher, batch, data, config,
                                  nn.ModuleList(nn.Identity() for _ in range(2)))[0].detach())
    before = loss_now()
    distill(student, data, config)
    assert loss_now() < before


def test_a_student_of_another_mechanism_learns_from_the_teacher():
    task, model = tiny()
    data = data_for(task, model)
    data.build = lambda mixer, options, overrides: (task.build_model(
        mixer, options, {"dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32, **overrides}),
        {"mixer": mixer})
    student, [report] = apply_recipe(model, [make_step("distill", {
        "steps": 20, "lr": 3e-3, "mixer": "gla"})], data, log=lambda m: None)
    assert student is not model and report["student"] == {"mixer": "gla"}
    assert report["last"]["loss"] < report["first"]["loss"]


# -- recipes ------------------------------------------------------------------------------

def test_recipes_refuse_bad_input_in_one_line():
    with pytest.raises(ValueError, match="unknown compression method 'nope'; valid: .*int8"):
        make_step("nope")
    with pytest.raises(ValueError, match="weight_bits must be in \\[2, 8\\], got 12"):
        make_step("int_static", {"weight_bits": 12})
    with pytest.raises(ValueError, match="sparsity must be in \\[0.0, 1.0\\), got 1.5"):
        make_step("magnitude", {"sparsity": 1.5})
    with pytest.raises(ValueError, match="fraction must be in"):
        make_step("prune_heads", {"fraction": -0.1})
    with pytest.raises(ValueError, match="has no option 'bits'; valid: weight_bits"):
        make_step("int_static", {"bits": 4})
    with pytest.raises(ValueError, match="needs at least one step"):
        recipe_from_dicts([])
    with pytest.raises(ValueError, match="needs a 'method'"):
        recipe_from_dicts([{"bits": 4}])
    from attnarena.compress.recipe import check_recipe
    with pytest.raises(ValueError, match="unknown mixer|Unknown mixer|valid"):
        check_recipe(tiny()[1], [make_step("distill", {"mixer": "nonesuch"})])
    with pytest.raises(ValueError, match="no subject adapter knows a Linear .*take: arena"):
        check_recipe(nn.Linear(2, 2), [make_step("int8_weight")])


def test_outlier_measures_of_known_block_outputs():
    from attnarena.compress.outliers import outlier_measures

    block = Block(64, "softmax", heads=2, mlp_dim=0)
    with torch.no_grad():  # the mixer adds nothing: the block's output is its input
        block.mixer.o_proj.weight.zero_()
        block.mixer.o_proj.bias.zero_()
    model = nn.Sequential(block)
    x = torch.randn(4, 256, 64, generator=torch.Generator().manual_seed(0))
    measures = outlier_measures(model, [x], lambda m, b: m(b).sum())
    assert abs(measures["kurtosis"] - 3.0) < 0.3  # Gaussian values
    x[:, :, 5] = 80.0  # an outlier channel, as in trained transformers
    x[1, 7, 5] = 90.0
    measures = outlier_measures(model, [x], lambda m, b: m(b).sum())
    assert measures["max_inf_norm"] == 90.0
    assert measures["kurtosis"] > 50.0


@given(st.integers(0, 10**6))
def test_fp4_codes_are_the_nearest_grid_values(seed):
    x = torch.randn(300, generator=torch.Generator().manual_seed(seed)) * 4
    x[:3] = torch.tensor([0.25, 2.5, -5.0])  # midpoints: ties
    grid = fq.fp4_grid()
    codes = fq.to_codes(x, torch.tensor(1.0), "fp4", 4).long()
    nearest = (x[:, None] - grid).abs().argmin(-1)  # the first of equally near values
    assert torch.equal(codes, nearest)


def test_torchao_methods_without_the_extra_name_the_pip_command(monkeypatch):
    import sys

    from attnarena.compress.recipe import check_recipe
    from attnarena.pretrained import MissingExtraError

    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'attnarena\[compress\]'"):
        check_recipe(tiny()[1], [make_step("int8_dynamic")])
    check_recipe(tiny()[1], [make_step("int_static")])  # written here: no extra needed


@pytest.mark.parametrize("saved, message", [
    ({"config": None, "recipe": [], "reports": []}, "expected an object with the source"),
    ({"config": {"task": "copy"}, "recipe": [], "reports": []}, "the run config lacks"),
    ({"config": {"pretrained": 3}, "recipe": [], "reports": []}, "must name a model"),
    ({"config": {"pretrained": "minilm"}, "recipe": [{}], "reports": []}, "one report per"),
])
def test_a_damaged_compressed_json_is_one_line_naming_it(tmp_path, saved, message):
    import json

    from attnarena.arena.deploy.compressed import load_compressed

    (tmp_path / "compressed.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=message) as caught:
        load_compressed(tmp_path)
    assert "compressed.json" in str(caught.value)
