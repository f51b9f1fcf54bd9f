import pytest
import torch

import attnarena as aa
from attnarena.mixers.base import Mixer
from attnarena.registry import FORMS, PATTERNS, register_mixer


def test_list_is_sorted_and_has_the_foundation_mechanisms():
    names = aa.list_mixers()
    assert names == sorted(names)
    assert {"softmax", "local", "linear", "performer", "cosine"} <= set(names)
    assert aa.list_mixers("*_linear") == ["log_linear", "ttt_linear"]
    assert "linear" in aa.list_mixers("*linear")


@pytest.mark.parametrize("name", aa.list_mixers())
def test_info_is_complete(name):
    info = aa.mixer_info(name)
    assert info.name == name
    assert info.paper and any(ch.isdigit() for ch in info.paper), "paper must cite a year"
    assert info.family and info.complexity.startswith("O(")
    assert info.patterns and set(info.patterns) <= set(PATTERNS)
    assert info.forms and set(info.forms) <= set(FORMS)
    cls = type(aa.create_mixer(name, dim=8, heads=2, causal="self" not in info.patterns))
    assert cls.__doc__ and info.paper.split(",")[0].split()[0] in cls.__doc__


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*softmax"):
        aa.create_mixer("softmaxx", dim=8)
    with pytest.raises(ValueError, match="did you mean 'softmax'"):
        aa.mixer_info("softmaxx")
    with pytest.raises(TypeError):
        aa.mixer_info(3)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'windw'.*valid options: .*window"):
        aa.create_mixer("local", dim=8, windw=4)


@pytest.mark.parametrize("kwargs, error", [
    ({"dim": 0}, ValueError), ({"dim": 8, "heads": 3}, ValueError),
    ({"dim": 8, "heads": 0}, ValueError), ({"dim": 8, "causal": "yes"}, TypeError),
    ({"dim": 8.0}, ValueError),
])
def test_bad_construction(kwargs, error):
    with pytest.raises(error):
        aa.create_mixer("softmax", **kwargs)


def test_bad_option_values():
    with pytest.raises(ValueError, match="window"):
        aa.create_mixer("local", dim=8, window=0)
    with pytest.raises(ValueError, match="form"):
        aa.create_mixer("linear", dim=8, form="fast")
    with pytest.raises(ValueError, match="feature_map"):
        aa.create_mixer("linear", dim=8, feature_map="tanh")
    with pytest.raises(ValueError, match="features"):
        aa.create_mixer("performer", dim=8, features=0)


def test_duplicate_and_bad_registration():
    with pytest.raises(ValueError, match="already registered"):
        @register_mixer("softmax", family="x", paper="x 2020", complexity="O(L)",
                        patterns={"self"}, forms={"parallel"})
        class Again(Mixer):
            def _forward(self, x, context, mask):
                return x
    with pytest.raises(TypeError, match="subclass of Mixer"):
        register_mixer("not_a_mixer", family="x", paper="x 2020", complexity="O(L)",
                       patterns={"self"}, forms={"parallel"})(torch.nn.Linear)
    with pytest.raises(ValueError, match="patterns"):
        register_mixer("bad_pattern", family="x", paper="x 2020", complexity="O(L)",
                       patterns={"diagonal"}, forms={"parallel"})
    with pytest.raises(TypeError, match="_init_state and _step"):
        @register_mixer("no_step", family="x", paper="x 2020", complexity="O(L)",
                        patterns={"causal"}, forms={"recurrent"})
        class NoStep(Mixer):
            def _forward(self, x, context, mask):
                return x
    assert "no_step" not in aa.list_mixers()
    assert "bad_pattern" not in aa.list_mixers()


def test_options_are_reported():
    options = aa.mixer_options("local")
    assert options["window"] == 128
    assert "dim" not in options and "causal" not in options
