"""DeepSpeed settings are declared once, by the job spec's DeepSpeedSpec (issue 11: one owner per fact).

The worker's DeepSpeedSettings used to repeat the block's fields with their own defaults and checks;
it now extends DeepSpeedSpec with the three numbers a trial's TrainConfig decides, so a field added to
the job spec reaches the backend, and a field declared again in the worker is refused here.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from orchestrator.deepspeed_backend import DeepSpeedSettings
from orchestrator.execution_spec import DeepSpeedSpec
from orchestrator.jobspec import FieldError

TRAIN_FIELDS = {"micro_batch_size", "grad_accum", "max_grad_norm"}  # from the TrainConfig, not the job


def _spec_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DeepSpeedSpec)}


def test_the_worker_declares_only_the_train_fields() -> None:
    assert issubclass(DeepSpeedSettings, DeepSpeedSpec)
    # A field the worker declares again (own annotations) would shadow the spec's default and comment.
    assert set(DeepSpeedSettings.__annotations__) == TRAIN_FIELDS
    assert {f.name for f in dataclasses.fields(DeepSpeedSettings)} == _spec_fields() | TRAIN_FIELDS


def _unusual_spec() -> DeepSpeedSpec:
    """A spec with no field at its default, so a field that is dropped or defaulted on the way shows."""
    spec = DeepSpeedSpec(enabled=False, zero_stage=3, bf16=True, offload_optimizer=True, offload_param=True,
                         config={"wall_clock_breakdown": True})
    defaults = DeepSpeedSpec()
    unchanged = [f for f in _spec_fields() if getattr(spec, f) == getattr(defaults, f)]
    assert not unchanged, f"give these fields a non-default value here: {unchanged}"
    return spec


def test_every_spec_field_round_trips_through_the_worker_settings() -> None:
    spec = _unusual_spec()
    cfg = SimpleNamespace(batch_size=4, grad_accum=3, max_grad_norm=0.5)
    settings = DeepSpeedSettings.for_train(cfg, spec)  # trial.py sends these settings to the workers
    assert {f: getattr(settings, f) for f in _spec_fields()} == dataclasses.asdict(spec)
    assert (settings.micro_batch_size, settings.grad_accum, settings.max_grad_norm) == (4, 3, 0.5)


def test_the_settings_check_what_the_spec_checks() -> None:
    with pytest.raises(FieldError, match="offload_param: needs zero_stage 3"):
        DeepSpeedSettings(zero_stage=2, offload_param=True)
