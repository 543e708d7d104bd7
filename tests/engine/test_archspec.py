"""ArchSpec export, build_model and malformed specs (nas.engine.archspec)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nas.engine.archspec import ArchSpec, build_model, load_archspec
from nas.engine.flops import CostModel, measure_flops
from nas.engine.supernet import Supernet
from nas.errors import UsageError
from nas.restoration.task import Task
from search_spaces.space import SearchSpace, SpaceConfig
from tests.conftest import LR, all_ops_space, perturb, random_arch, spec_dict


@pytest.mark.parametrize("task", [Task("sr", scale=3), Task("denoise")])
def test_export_build_model_matches_supernet(task, tmp_path):
    torch.manual_seed(1)
    net = Supernet(all_ops_space(), task, LR)
    perturb(net.net, seed=2)
    net.eval()
    rng = random.Random(3)
    x = torch.rand(1, 3, *LR)
    for i in range(4):
        arch = random_arch(net.space, rng)
        spec = ArchSpec(task=task.to_dict(), backbone={"type": "edsr", "num_feat": 16,
                                                       "num_block": 4, "res_scale": 1.0},
                        space={"ops": net.space.config.ops, "max_refs": 2, "keys": [0, 1, 2, 4],
                               "op_config": net.space.config.op_config},
                        choices=arch, cost={"lr_size": list(LR)})
        path = spec.save(tmp_path / f"arch{i}.json")
        model = build_model(load_archspec(path))
        from nas.engine.network import inherit_weights

        inherit_weights(net.net, model)
        model.eval()
        with torch.no_grad():
            a = net(x, net.decisions(arch))
            b = model(x)
        assert torch.allclose(a, b, atol=1e-5), arch
        assert not torch.allclose(a, net(x, net.decisions(
            {c.label: c.values[0] for c in net.space.choices()})))
        assert measure_flops(model, x) == CostModel(spec.search_space(), task, LR).exact(arch)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(format_version=2), "format_version: expected 1, got 2"),
    (lambda d: d["choices"].update({"b01/keys@b00": 5}), "b01/keys@b00: 5 is not offered"),
    (lambda d: d["choices"].update({"b09/op": "acla"}), "unknown label 'b09/op'"),
    (lambda d: d["choices"].update({"b00/op": "aclaa"}), "b00/op: 'aclaa' is not offered"),
    (lambda d: d["backbone"].update(type="rcan"), "backbone.type"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
])
def test_malformed_archspec_one_line_error(tmp_path, mutate, needle):
    d = spec_dict()
    ArchSpec.from_dict(d)  # the unmodified spec is valid
    mutate(d)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UsageError) as e:
        load_archspec(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_explicit_refs_paper_placement_roundtrip(tmp_path):
    """The ACLA paper's placement: attention after each of 4 stages, reading the head and every
    earlier stage output with 9 keys each (refs given explicitly, one key value: no key choice)."""
    refs = {"b00": ["head"], "b01": ["head", "b00"], "b02": ["head", "b00", "b01"],
            "b03": ["head", "b00", "b01", "b02"]}
    cfg = SpaceConfig(backbone={"preset": "edsr-tiny"}, ops=["skip", "acla"], keys=[9], refs=refs)
    net = Supernet(cfg, Task("sr", scale=2), LR)
    assert [c.label for c in net.space.choices()] == ["b00/op", "b01/op", "b02/op", "b03/op"]
    arch = {f"b0{i}/op": "acla" for i in range(4)}
    fixed = net.fixed_network(arch)
    assert [ip.refs for ip in fixed.points.values()] == [tuple(v) for v in refs.values()]
    spec = ArchSpec(task={"name": "sr", "scale": 2},
                    backbone={"type": "edsr", "num_feat": 16, "num_block": 4, "res_scale": 1.0},
                    space={"ops": ["skip", "acla"], "keys": [9], "refs": refs}, choices=arch)
    model = build_model(load_archspec(spec.save(tmp_path / "paper.json")))
    x = torch.rand(1, 3, *LR)
    assert measure_flops(model, x) == net.cost.exact(arch) == float(
        net.cost.expected(net.cost.one_hot_probs(arch)))
    with pytest.raises(UsageError, match="space.refs.b01"):
        SearchSpace(SpaceConfig(refs={"b01": ["b02"]}), 4)
