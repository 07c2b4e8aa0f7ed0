"""AlgoConfig: presets, overrides, validation of combinations, the status -> reward map."""

import pytest
import torch
from pydantic import Field, ValidationError

from winnow.config import ConfigError, Settings, load_config, settings_config
from winnow.learner.algo import PRESETS, AlgoConfig, reward_from_status
from winnow.verdict import Status

EXPECTED = {
    # name: (filter, advantage, loss), the table in docs/algorithms.md
    "raft": ("raft", "raft", "sft"),
    "raft++": ("raft", "raft", "clipped"),
    "raft++clip_higher": ("raft", "raft", "clipped"),
    "reinforce": ("none", "raw", "clipped"),
    "grpo": ("none", "mean_std", "clipped"),
    "reinforce_rej": ("mixed", "raw", "clipped"),
    "reinforce+mean_zero": ("none", "mean_zero", "clipped"),
    "reinforce+remove_all_wrong": ("remove_all_wrong", "raw", "clipped"),
    "reinforce+remove_all_correct": ("remove_all_correct", "raw", "clipped"),
    "reinforce_rej+std": ("mixed", "mean_std", "clipped"),
    "raft_beta": ("raft_beta", "unit", "sft"),
    "raft++_beta": ("raft_beta", "unit", "clipped"),
    "raft_snis": ("none", "snis", "sft"),
}


def test_every_preset_has_the_documented_fields():
    assert set(PRESETS) == set(EXPECTED)
    for name, (flt, adv, loss) in EXPECTED.items():
        cfg = AlgoConfig.from_preset(name)
        assert (cfg.preset, cfg.filter, cfg.advantage, cfg.loss) == (name, flt, adv, loss)
    assert AlgoConfig.from_preset("raft++clip_higher").eps_high == 0.28


def test_docs_table_lists_every_preset():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "algorithms.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in doc, f"docs/algorithms.md does not document preset {name}"


def test_defaults_follow_the_released_scripts():
    cfg = AlgoConfig()
    assert cfg.preset == "reinforce_rej"
    assert (cfg.eps_low, cfg.eps_high, cfg.dual_clip_c) == (0.2, 0.2, 3.0)
    assert (cfg.kl_coef, cfg.kl_estimator, cfg.entropy_coef, cfg.agg) == (0.001, "k3", 0.001, "token-mean")
    assert (cfg.std, cfg.eps, cfg.reward_correct, cfg.reward_wrong) == ("unbiased", 1e-6, 1.0, 0.0)
    assert not cfg.soft_filter and not cfg.decoupled


def test_explicit_fields_override_the_preset_and_round_trip():
    cfg = AlgoConfig.from_preset("grpo", advantage="mean_zero", kl_coef=0.0)
    assert (cfg.filter, cfg.advantage, cfg.kl_coef) == ("none", "mean_zero", 0.0)
    assert AlgoConfig(**cfg.model_dump()) == cfg


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown algorithm 'ppo'; valid: raft, raft\+\+"):
        AlgoConfig.from_preset("ppo")
    with pytest.raises(ValidationError, match="unknown algorithm 'dpo'"):
        AlgoConfig(preset="dpo")


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("raft", {"advantage": "mean_std"}, "loss=sft with advantage=mean_std"),
        ("reinforce", {"loss": "sft", "reward_wrong": -1.0}, "loss=sft with advantage=raw and filter=none"),
        ("grpo", {"reward_wrong": 1.0}, "reward_wrong=1.0 must be below reward_correct"),
        ("grpo", {"reward_timeout": 2.0}, "reward_timeout=2.0 must be below"),
        ("raft", {"decoupled": True}, "decoupled=True needs a ratio"),
        ("grpo", {"eps_low": 1.0}, "eps_low"),
        ("grpo", {"dual_clip_c": 1.0}, "dual_clip_c"),
        ("grpo", {"kl_coef": -0.1}, "kl_coef"),
        ("grpo", {"filter": "best"}, "filter"),
        ("grpo", {"lr": 1e-6}, "lr"),  # extra keys are rejected (the optimiser has its own config)
    ],
)
def test_bad_combinations_name_the_fields(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        AlgoConfig.from_preset(preset, **overrides)


def test_allowed_sft_combinations():
    # RAFT under the paper's +-1 reward map: wrong samples are filtered out, so SFT never sees r = -1
    assert AlgoConfig.from_preset("raft", reward_wrong=-1.0).reward_wrong == -1.0
    assert AlgoConfig.from_preset("raft", advantage="raw", reward_wrong=-1.0).advantage == "raw"


class _Demo(Settings):
    section = "demo"
    model_config = settings_config("demo")
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    """The algorithm."""


def test_preset_from_env_file_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("WINNOW_DEMO_ALGO__PRESET", "raft")
    cfg = load_config(_Demo)
    assert (cfg.algo.filter, cfg.algo.loss) == ("raft", "sft")
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  algo:\n    preset: grpo\n    eps_high: 0.28\n")
    monkeypatch.delenv("WINNOW_DEMO_ALGO__PRESET")
    cfg = load_config(_Demo, f)
    assert (cfg.algo.advantage, cfg.algo.eps_high) == ("mean_std", 0.28)
    with pytest.raises(ConfigError, match="algo"):
        load_config(_Demo, f, {"algo": {"preset": "nope"}})


# ---------------------------------------------------------------- status -> reward
ALL = torch.tensor([[int(s) for s in Status]])  # UNSPECIFIED..ERROR


def test_reward_map_default_and_pm1():
    r, valid = reward_from_status(ALL, AlgoConfig())
    # UNSPECIFIED, CORRECT, WRONG, NO_ANSWER, UNPARSABLE, TIMEOUT, TOO_COMPLEX, ERROR
    assert r.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    assert valid.tolist() == [[False, True, True, True, True, True, True, False]]
    cfg = AlgoConfig(reward_wrong=-1.0, reward_no_answer=-2.0, reward_timeout=0.0)
    r, _ = reward_from_status(ALL, cfg)
    assert r.tolist() == [[0.0, 1.0, -1.0, -2.0, -1.0, 0.0, -1.0, 0.0]]


def test_errors_are_excluded_never_wrong():
    st = torch.tensor([[1, 7, 2, 2], [1, 2, 2, 1]])
    _, valid = reward_from_status(st, AlgoConfig())
    assert valid.tolist() == [[True, False, True, True], [True] * 4]
    _, valid = reward_from_status(st, AlgoConfig(error_policy="exclude_group"))
    assert valid.tolist() == [[False] * 4, [True] * 4]
    with pytest.raises(ValueError, match="unknown verifier status 9"):
        reward_from_status(torch.tensor([[1, 9]]), AlgoConfig())
