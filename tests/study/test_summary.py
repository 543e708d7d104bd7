"""Parameter importances of a study's summary (nas.study.summary.param_importances)."""

from __future__ import annotations

import optuna

from nas.study.summary import param_importances


def _trials(n=12, seed=0):
    """Planted: PSNR depends on ``a`` only, GFLOPs on ``b`` only."""
    import random

    rng = random.Random(seed)
    dists = {"a": optuna.distributions.FloatDistribution(0, 1),
             "b": optuna.distributions.FloatDistribution(0, 1)}
    out = []
    for _ in range(n):
        a, b = rng.random(), rng.random()
        out.append(optuna.trial.create_trial(params={"a": a, "b": b}, distributions=dists,
                                             values=[30 + a, 10 + 5 * b]))
    return out


def test_importances_find_the_planted_dependence():
    imp = param_importances(_trials())
    assert imp["psnr_db"]["a"] > 0.9 and imp["gflops"]["b"] > 0.9
    assert abs(sum(imp["psnr_db"].values()) - 1) < 1e-6


def test_references_duplicates_and_small_studies_are_left_out():
    ts = _trials(3)
    assert param_importances(ts) == {}
    ref = optuna.trial.create_trial(values=[31.0, 9.0], user_attrs={"reference": "no_attention"})
    dup = optuna.trial.create_trial(params=ts[0].params, distributions=ts[0].distributions,
                                    values=[29.0, 99.0], user_attrs={"duplicate_of": 0})
    assert param_importances(ts + [ref, dup]) == {}
    assert set(param_importances(_trials(5))) == {"psnr_db", "gflops"}
