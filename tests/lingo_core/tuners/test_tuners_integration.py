"""ARS on the real SmolLM2-135M at the default rank budget trains < 2% of the parameters."""

from __future__ import annotations

import pytest

from lingo_core.tuners import AdapterSettings, build_model, resolve_ranks, trainable_summary


@pytest.mark.integration
def test_ars_on_smollm2_trains_under_two_percent(smollm2_ref):
    from lingo_core.modeling import load_classifier

    base = load_classifier(smollm2_ref, num_labels=2)
    settings = resolve_ranks(AdapterSettings(method="ars"), 50_000)  # default init_r 8 on all projections
    assert settings.init_r == 8
    model, controller = build_model(base, settings, total_steps=1000, seed=0)
    trainable, total, fraction = trainable_summary(model)
    print(f"\nARS on SmolLM2-135M, init_r={settings.init_r}: {trainable:,} / {total:,} trainable = {fraction:.4%}")
    assert len(controller.layers) == 30 * 7  # 30 layers x 7 projections adapted
    assert fraction < 0.02
