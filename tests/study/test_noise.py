"""The study's noise floor (nas.study.noise.measure_noise) on a planted study: scores come from a
table instead of training, so the front's movement between rounds is known."""

from __future__ import annotations

from types import SimpleNamespace

import optuna

from nas.engine.network import canonical_arch
from nas.engine.scoring import Score, ScoreCache, arch_key, protocol_key
from nas.study.noise import PLAIN_ATTR, PROTOCOL_ATTR, architecture_rows, measure_noise, scores_by_arch
from nas.study.objective import study_space
from tests.conftest import tiny_cfg


def test_every_front_point_gets_the_noise_seeds_even_after_the_front_moves():
    cfg = tiny_cfg(**{"score.noise_seeds": 3})
    space = study_space(cfg)
    labels = [p.op_label() for p in space]
    p0 = next(iter(space))
    plain = canonical_arch(space, space.validate({lb: "skip" for lb in labels}))
    one = canonical_arch(space, space.validate(
        {**{lb: "skip" for lb in labels}, labels[0]: "acla",
         **{p0.key_label(r): 2 for r in p0.refs}}))
    # planted: plain is best on seed 0 but poor on seeds 1 and 2; "one" is steady
    table = {(arch_key(plain), 0): 30.10, (arch_key(plain), 1): 29.90, (arch_key(plain), 2): 29.90,
             (arch_key(one), 0): 30.05, (arch_key(one), 1): 30.05, (arch_key(one), 2): 30.05}
    calls = []

    def fake_score(cfg_, space_, arch, seed, device):
        calls.append((arch_key(arch), seed))
        return Score(table[(arch_key(arch), seed)], seed, 0.0)

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    sid = storage.get_study_id_from_name(study.study_name)
    proto = protocol_key(cfg)
    storage.set_study_system_attr(sid, PROTOCOL_ATTR, proto)
    storage.set_study_system_attr(sid, PLAIN_ATTR, arch_key(plain))
    for arch, gflops, ref in ((plain, 1.0, "no_attention"), (one, 1.2, None)):
        storage.set_study_system_attr(sid, ScoreCache.key(proto, arch, 0),
                                      {"psnr_db": table[(arch_key(arch), 0)], "seconds": 0})
        attrs = {"arch_key": arch_key(arch), "arch": arch, **({"reference": ref} if ref else {})}
        study.add_trial(optuna.trial.create_trial(values=[table[(arch_key(arch), 0)], gflops],
                                                  user_attrs=attrs))
    # on seed 0 alone plain dominates "one"; after plain's seeds 1, 2 its mean drops and "one"
    # joins the front - it must then get its seeds too
    runs = measure_noise(SimpleNamespace(cfg=cfg), study, storage,
                         group=SimpleNamespace(score=fake_score))
    assert runs == 4 and sorted(calls) == sorted(
        [(arch_key(plain), 1), (arch_key(plain), 2), (arch_key(one), 1), (arch_key(one), 2)])
    rows = architecture_rows(study.get_trials(), scores_by_arch(
        storage.get_study_system_attrs(sid), proto), arch_key(plain))
    front = [r for r in rows if r["front"]]
    assert {r["arch_key"] for r in front} == {arch_key(plain), arch_key(one)}
    assert all(r["n_seeds"] == 3 for r in front)
    assert measure_noise(SimpleNamespace(cfg=cfg), study, storage,
                         group=SimpleNamespace(score=fake_score)) == 0  # nothing left to do


def _trial(number, key, gflops, psnr):
    return SimpleNamespace(number=number, state=SimpleNamespace(name="COMPLETE"),
                           values=[psnr, gflops], user_attrs={"arch_key": key})


def test_dominated_architectures_within_noise_of_the_front_are_marked():
    """Planted: "cheap" dominates both others in the means; "noisy" trails it by a paired
    difference of 0.01 +- 0.023 dB (within 2 SE), "worse" by 1.0 +- 0.06 dB (beyond)."""
    scores = {"cheap": {0: 30.00, 1: 30.00, 2: 30.00},
              "noisy": {0: 29.95, 1: 30.03, 2: 29.99},
              "worse": {0: 29.00, 1: 28.90, 2: 29.10}}
    trials = [_trial(0, "cheap", 1.0, 30.0), _trial(1, "noisy", 1.5, 29.95),
              _trial(2, "worse", 2.0, 29.0)]
    rows = {r["arch_key"]: r for r in architecture_rows(trials, scores, "cheap")}
    assert [k for k, r in rows.items() if r["front"]] == ["cheap"]
    assert rows["noisy"]["near_front"] and not rows["worse"]["near_front"]
    assert not rows["cheap"]["near_front"]  # a front point is never "near" itself
    # the same gap with a single common seed falls back to the pooled seed SD (0.10 dB here):
    # 1.0 dB is beyond 2 x sqrt(2) x SD, 0.05 dB is not
    one_seed = {k: {0: v[0]} for k, v in scores.items()}
    one_seed["cheap"].update({1: 30.1, 2: 29.9})  # gives the pooled SD something to pool
    rows = {r["arch_key"]: r for r in architecture_rows(trials, one_seed, "cheap")}
    assert rows["noisy"]["near_front"] and not rows["worse"]["near_front"]
