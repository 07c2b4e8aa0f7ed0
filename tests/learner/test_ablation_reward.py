"""The paper's Fig. 4 ablation presets warn when used under the {0, 1} reward (they need +-1)."""

import warnings

import pytest

from winnow.learner.algo import PLUS_MINUS_ONE_ABLATIONS, PRESETS, AlgoConfig


@pytest.mark.parametrize("preset", sorted(PLUS_MINUS_ONE_ABLATIONS))
def test_ablation_preset_under_zero_one_reward_warns(preset):
    with pytest.warns(UserWarning, match=r"reward_wrong=-1") as record:
        AlgoConfig(preset=preset)  # default reward_wrong = 0
    assert preset in str(record[0].message)


@pytest.mark.parametrize("preset", sorted(PLUS_MINUS_ONE_ABLATIONS))
def test_ablation_preset_under_plus_minus_one_is_silent(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlgoConfig(preset=preset, reward_wrong=-1.0)


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - set(PLUS_MINUS_ONE_ABLATIONS)))
def test_main_presets_do_not_warn_under_zero_one(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlgoConfig(preset=preset)


def test_every_ablation_named_is_a_preset():
    assert set(PLUS_MINUS_ONE_ABLATIONS) <= set(PRESETS)
