"""Deriving the most probable architecture within a FLOPs budget (nas.engine.derive), against
brute-force enumeration of every label setting."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from nas.engine.derive import derive, derive_top, flops_range
from nas.engine.flops import CostModel
from nas.engine.network import build_backbone, canonical_arch
from nas.restoration.task import Task
from search_spaces.space import SearchSpace, SpaceConfig

TASK = Task("sr", scale=2)


def space_of(**kw) -> SearchSpace:
    cfg = SpaceConfig(backbone={"preset": "edsr-tiny"}, **kw)
    return SearchSpace(cfg, build_backbone(cfg, TASK).config.num_block)


def random_probs(space: SearchSpace, rng: random.Random) -> dict:
    out = {}
    for c in space.choices():
        w = [rng.random() ** 3 + 1e-3 for _ in c.values]
        out[c.label] = {v: x / sum(w) for v, x in zip(c.values, w)}
    return out


def network_probs(space, probs, cost) -> dict[str, tuple[dict, float, int]]:
    """Every label setting -> its network (canonical arch): summed probability and FLOPs."""
    choices = space.choices()
    nets: dict[str, list] = {}
    for values in itertools.product(*[c.values for c in choices]):
        arch = dict(zip([c.label for c in choices], values))
        pr = math.prod(probs[c.label][v] for c, v in zip(choices, values))
        canon = canonical_arch(space, arch)
        key = json.dumps(canon, sort_keys=True)
        if key not in nets:
            nets[key] = [canon, 0.0, cost.exact(canon)]
        nets[key][1] += pr
    return {k: tuple(v) for k, v in nets.items()}


@pytest.mark.parametrize("kw", [
    {"points": ["b00", "b01", "b02"], "ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4]},
    {"points": ["b01", "b02", "b03"], "ops": ["skip", "acla", "lcoa"], "max_refs": 1,
     "keys": [0, 3], "op_config": {"lcoa": {"collaborative": True, "window": 16, "n_clusters": 4}}},
    {"points": ["b00", "b02"], "ops": ["skip", "acla", "rela"], "max_refs": 1, "keys": [2, 4],
     "op_config": {"rela": {"heads": 2}}},
])
def test_derive_equals_brute_force_within_every_budget(kw):
    space = space_of(**kw)
    cost = CostModel(space, TASK, (12, 14))
    lo, hi = flops_range(space, cost)
    rng = random.Random(0)
    for trial in range(6):
        probs = random_probs(space, rng)
        nets = network_probs(space, probs, cost)
        assert sum(p for _, p, _ in nets.values()) == pytest.approx(1.0)
        for budget in [None, lo, lo + (hi - lo) * 0.3, lo + (hi - lo) * 0.7, hi]:
            feasible = [n for n in nets.values() if budget is None or n[2] <= budget]
            best_p = max(p for _, p, _ in feasible)
            got = derive(space, probs, cost, budget)
            _, got_p, got_f = nets[json.dumps(got, sort_keys=True)]
            assert budget is None or got_f <= budget
            assert got_p == pytest.approx(best_p, rel=1e-9), (trial, budget)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_derive_top_equals_brute_force_ranking(k):
    """The k most probable networks within each budget, in order (probabilities compared, so
    ties between equally probable networks may come in either order)."""
    space = space_of(points=["b00", "b01", "b02"], ops=["skip", "acla"], max_refs=2, keys=[0, 2, 4])
    cost = CostModel(space, TASK, (12, 14))
    lo, hi = flops_range(space, cost)
    rng = random.Random(1)
    for trial in range(4):
        probs = random_probs(space, rng)
        nets = network_probs(space, probs, cost)
        for budget in [None, lo + (hi - lo) * 0.3, hi]:
            feasible = sorted((p for _, p, f in nets.values() if budget is None or f <= budget),
                              reverse=True)
            got = derive_top(space, probs, cost, budget, k)
            keys = [json.dumps(a, sort_keys=True) for a in got]
            assert len(set(keys)) == len(keys) == min(k, len(feasible))
            assert [nets[key][1] for key in keys] == pytest.approx(feasible[:k], rel=1e-9)
            assert got[0] == derive(space, probs, cost, budget)
            assert all(budget is None or nets[key][2] <= budget for key in keys)
    with pytest.raises(ValueError, match="k must be"):
        derive_top(space, probs, cost, None, 0)


def test_flops_range_is_the_extremes():
    space = space_of(points=["b00", "b01"], ops=["skip", "acla"], max_refs=1, keys=[0, 2, 4])
    cost = CostModel(space, TASK, (12, 14))
    lo, hi = flops_range(space, cost)
    assert lo == cost.fixed
    assert hi == cost.exact({"b00/op": "acla", "b00/keys@head": 4, "b01/op": "acla",
                             "b01/keys@b00": 4})


def test_budget_below_the_cheapest_gives_the_cheapest():
    space = space_of(points=["b00", "b01"], ops=["skip", "acla"], max_refs=1, keys=[0, 2, 4])
    cost = CostModel(space, TASK, (12, 14))
    probs = {c.label: {v: (0.9 if v in ("acla", 4) else 0.1 / (len(c.values) - 1)) for v in c.values}
             for c in space.choices()}
    assert derive(space, probs, cost, None)["b00/op"] == "acla"
    assert set(derive(space, probs, cost, 1).values()) == {"skip"}
