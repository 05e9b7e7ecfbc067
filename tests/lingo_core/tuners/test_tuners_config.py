"""AdapterSettings validation, the schedule check, rank budget defaults, target-module errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lingo_core.data.task import TaskSpec
from lingo_core.train.config import TrainConfig
from lingo_core.tuners import AdapterSettings, build_model, default_rank_budget, resolve_ranks
from lingo_core.tuners.budget import rank_budget, resolve_adapter, train_rows


def test_defaults_are_valid():
    s = AdapterSettings()
    assert s.method == "ars" and s.deltaT == 1
    assert s.validate_schedule(100) == (10, 20)  # 10% warm-up, 20% final phase


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"method": "dora"}, ["method", "'dora'", "ars, lora, adalora, prefix, full, probe"]),
        ({"init_r": -1}, ["init_r", "-1", "positive integer"]),
        ({"target_r": 0}, ["target_r", "0", "positive integer"]),
        ({"init_r": 4, "target_r": 8}, ["target_r (8) > init_r (4)"]),
        ({"exploration": 1.5}, ["exploration", "1.5", "[0, 1]"]),
        ({"exploration": -0.1}, ["exploration", "-0.1", "[0, 1]"]),
        ({"hold_dropped_importance": "yes"}, ["hold_dropped_importance", "'yes'", "true or false"]),
        ({"resample_every": 0}, ["resample_every", "0", ">= 1"]),
        ({"orth_reg_weight": -0.1}, ["orth_reg_weight", "-0.1", "a number >= 0"]),
        ({"orth_reg_weight": "high"}, ["orth_reg_weight", "'high'", "a number >= 0"]),
        ({"svd_init": "gaussian"}, ["svd_init", "'gaussian'", "lora, adalora"]),
        ({"sampling": "gumbel"}, ["sampling", "'gumbel'", "uniform, importance"]),
        ({"tinit": -1}, ["tinit", "-1", ">= 0"]),
        ({"tfinal": -3}, ["tfinal", "-3", ">= 0"]),
        ({"deltaT": 0}, ["deltaT", "0", ">= 1"]),
        ({"beta1": 1.0}, ["beta1", "(0, 1)"]),
        ({"lora_dropout": 1.0}, ["lora_dropout", "[0, 1)"]),
        ({"target_modules": []}, ["target_modules", "non-empty"]),
    ],
)
def test_bad_settings_name_field_value_and_expectation(kwargs, fragments):
    with pytest.raises(ValueError) as err:
        AdapterSettings(**kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(("method", "given", "used"), [("ars", None, 0.5), ("adalora", None, 0.5), ("ars", 0.0, 0.0)])
def test_the_controller_gets_the_orthogonality_weight(make_base, method, given, used):
    """Catches: an orth_reg_weight lost on its way to the RankController (the GPU proof sets ars's to
    the dev-chosen 0.0 through the job spec), or a default that left PEFT's 0.5."""
    settings = AdapterSettings(method=method, init_r=4, target_r=2,
                               **({} if given is None else {"orth_reg_weight": given}))
    _, controller = build_model(make_base(), settings, 40, 0)
    assert controller.orth_reg_weight == used


def test_target_modules_accepts_comma_string():
    assert AdapterSettings(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]


def test_schedule_without_decay_phase_is_rejected():
    with pytest.raises(ValueError) as err:
        AdapterSettings(tinit=30, tfinal=80).validate_schedule(100)
    msg = str(err.value)
    assert "tinit (30)" in msg and "tfinal (80)" in msg and "total_steps (100)" in msg
    with pytest.raises(ValueError, match=r"tinit \(5\) \+ tfinal \(5\) = 10 >= total_steps \(10\)"):
        AdapterSettings(tinit=5, tfinal=5).validate_schedule(10)
    with pytest.raises(ValueError, match="total_steps"):
        AdapterSettings().validate_schedule(0)


def test_build_model_checks_schedule(make_base):
    with pytest.raises(ValueError, match=r"tinit \(6\) \+ tfinal \(4\) = 10 >= total_steps \(10\)"):
        build_model(make_base(), AdapterSettings(init_r=4, target_r=2, tinit=6, tfinal=4), 10, 0)


@pytest.mark.parametrize("method", ["ars", "lora", "adalora"])
def test_unknown_target_module_lists_model_linears(make_base, method):
    settings = AdapterSettings(method=method, init_r=4, target_r=2, target_modules=["q_proj", "qkv"])
    with pytest.raises(ValueError) as err:
        build_model(make_base(), settings, 40, 0)
    msg = str(err.value)
    assert "['qkv']" in msg and "target_modules" in msg
    for linear in ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"):
        assert linear in msg


@pytest.mark.parametrize("old", ["p_regrow", "p_drop"])
def test_removed_sampling_keys_say_what_to_write_instead(old):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"adapter": {old: 0.1}})
    assert f"adapter.{old}" in str(err.value) and "adapter.exploration" in str(err.value)


def test_default_resample_period_is_an_eighth_of_the_pruning_phase():
    assert AdapterSettings().resample_period(60, 120, 600) == 52  # (600 - 60 - 120) // 8
    assert AdapterSettings().resample_period(1, 2, 12) == 1  # short runs: never below one step
    assert AdapterSettings(resample_every=7).resample_period(60, 120, 600) == 7


def _task(train_rows: int | None) -> TaskSpec:
    sizes = {"train": train_rows} if train_rows is not None else None
    return TaskSpec(name="t", path=Path("."), num_labels=2, label_names=("a", "b"), seq_len_bp=70,
                    description="promoter", sizes=sizes)


@pytest.mark.parametrize(("n_train", "expected"), [(0, (8, 2)), (4_999, (8, 2)), (5_000, (8, 4)),
                                                   (29_999, (8, 4)), (30_000, (8, 6)), (10**6, (8, 6))])
def test_default_rank_budget_tiers(n_train, expected):
    assert default_rank_budget(n_train) == expected


def test_default_rank_budget_says_what_is_missing():
    with pytest.raises(ValueError, match="n_train is None; expected the number of training sequences"):
        default_rank_budget(None)


def test_resolve_ranks_fills_only_unset_ranks():
    filled = resolve_ranks(AdapterSettings(), 1_000)
    assert (filled.init_r, filled.target_r) == (8, 2)
    assert resolve_ranks(AdapterSettings(init_r=3), 50_000).target_r == 3  # capped at init_r
    assert resolve_ranks(AdapterSettings(target_r=12), 100).init_r == 12  # init raised to target
    kept = resolve_ranks(AdapterSettings(init_r=6, target_r=1), 100)
    assert (kept.init_r, kept.target_r) == (6, 1)


def test_train_rows_counts_the_split_after_max_train_samples():
    assert train_rows(_task(40_000), None) == 40_000
    assert train_rows(_task(40_000), 512) == 512  # the cap: what the trainer's stratified subset keeps
    assert train_rows(_task(300), 512) == 300  # a cap above the split changes nothing
    assert train_rows(_task(None), 2_000, split_rows=7_000) == 2_000  # the caller's loaded count
    assert rank_budget(_task(40_000), None) == (8, 6) and rank_budget(_task(40_000), 20_000) == (8, 4)


def test_resolve_adapter_fills_rank_methods_only():
    ars = resolve_adapter(AdapterSettings(method="adalora"), _task(40_000), 4_000)
    assert (ars.init_r, ars.target_r) == (8, 2)
    lora = resolve_adapter(AdapterSettings(method="lora"), _task(40_000), None)
    assert (lora.init_r, lora.target_r) == (None, None)


def test_build_model_fallback_is_the_rule_at_a_mid_size_task(make_base):
    """Unresolved ranks at build_model: resolve_ranks at 10k rows (8 -> 4), user ranks kept, with a warning."""
    with pytest.warns(UserWarning, match="unset at build_model"):
        _, controller = build_model(make_base(), AdapterSettings(target_r=3), 40, 0)
    n = len(controller.names)
    assert (controller.init_budget, controller.target_budget) == (8 * n, 3 * n)
    with pytest.warns(UserWarning, match=r"\(8, 4\)"):
        _, controller = build_model(make_base(), AdapterSettings(), 40, 0)
    assert (controller.init_budget, controller.target_budget) == (8 * n, 4 * n)
