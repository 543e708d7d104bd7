"""Supernet, gates, expected FLOPs, export and resume (issue 4)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nas.archspec import ArchSpec, build_model, load_archspec
from nas.config import PenaltyConfig, load_config
from nas.cost import CostModel
from nas.data import Task
from nas.errors import UsageError
from nas.flops import measure_flops
from nas.gates import TemperatureSchedule, gumbel_softmax_st
from nas.search import SearchRun, flops_penalty
from nas.supernet import Supernet
from search_spaces.space import SearchSpace, SpaceConfig

LR = (12, 14)  # small reference size so the measured FLOPs come from a real forward


def all_ops_space(**kw) -> SpaceConfig:
    return SpaceConfig(
        backbone={"preset": "edsr-tiny"}, ops=["skip", "acla", "rela", "lcoa", "nla"],
        max_refs=2, keys=[0, 1, 2, 4],
        op_config={"lcoa": {"collaborative": True, "window": 16, "n_clusters": 4},
                   "rela": {"heads": 2}}, **kw)


def random_arch(space: SearchSpace, rng: random.Random) -> dict:
    return {c.label: rng.choice(c.values) for c in space.choices()}


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ------------------------------------------------------------------------------------ gates
def test_hard_gumbel_is_one_hot_with_soft_gradient():
    a = torch.zeros(4, requires_grad=True)
    w = gumbel_softmax_st(a, tau=1.0)
    assert sorted(w.detach().tolist()) == [0.0, 0.0, 0.0, 1.0]
    (w * torch.arange(4.0)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_temperature_schedules():
    e = TemperatureSchedule(5.0, 0.5, 100, "exponential")
    lin = TemperatureSchedule(5.0, 0.5, 100, "linear")
    assert e(0) == pytest.approx(5.0) and e(100) == pytest.approx(0.5) and e(500) == e(100)
    assert e(50) == pytest.approx((5.0 * 0.5) ** 0.5)
    assert lin(50) == pytest.approx(2.75)
    with pytest.raises(UsageError):
        TemperatureSchedule(0.0, 0.5, 10)


def test_alpha_out_of_weight_parameters():
    net = Supernet(SpaceConfig(backbone={"preset": "edsr-tiny"}), Task("sr", scale=2), LR)
    w_ids = {id(p) for p in net.weight_parameters()}
    a_ids = {id(p) for p in net.arch_parameters()}
    assert a_ids and not (w_ids & a_ids)
    assert len(w_ids) + len(a_ids) == len(list(net.parameters()))
    assert set(net.gates.labels()) == {c.label for c in net.space.choices()}


# ------------------------------------------------------------------------------------- cost
def test_expected_flops_equals_measured_for_one_hot():
    torch.manual_seed(0)
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    rng = random.Random(0)
    archs = [random_arch(net.space, rng) for _ in range(10)]
    archs.append({c.label: c.values[0] for c in net.space.choices()})  # all skip
    archs.append({c.label: (c.values[1] if c.label.endswith("/op") else 0)
                  for c in net.space.choices()})  # ACLA reading no key == skip
    x = torch.rand(1, 3, *LR)
    for arch in archs:
        fixed = net.fixed_network(arch).eval()
        measured = measure_flops(fixed, x)
        e = float(net.cost.expected(net.cost.one_hot_probs(arch)))
        assert e == measured == net.cost.exact(arch), arch


def test_expected_flops_gradient_signs():
    """dE[F]/dalpha_j = p_j (F_j - E_point[F]): positive exactly for the costlier-than-average
    choices; with {skip, acla} the insert logit's gradient is positive."""
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    net.expected_flops().backward()
    cm = net.cost
    for p in net.space:
        g = net.gates.alpha[p.op_label()].grad
        pr = net.probs()[p.op_label()].detach().double()
        costs = []
        for op in p.ops:  # expected cost of each op under the current key probabilities
            arch_p = {k: v.detach() for k, v in net.probs().items()}
            arch_p[p.op_label()] = torch.nn.functional.one_hot(
                torch.tensor(p.ops.index(op)), len(p.ops)).double()
            costs.append(float(cm.expected(arch_p)))
        mean = float((pr * torch.tensor(costs)).sum())
        for j, op in enumerate(p.ops):
            assert (g[j] > 0) == (costs[j] > mean), (p.name, op)
        assert g[p.ops.index("skip")] < 0
        for r in p.refs:
            gk = net.gates.alpha[p.key_label(r)].grad
            assert gk[0] < 0 and gk[-1] > 0 and torch.all(gk[1:] > gk[:-1])  # more keys, more
    two = Supernet(SpaceConfig(backbone={"preset": "edsr-tiny"}), Task("sr", scale=2), LR)
    two.expected_flops().backward()
    for p in two.space:
        assert two.gates.alpha[p.op_label()].grad[1] > 0  # dE[F]/dalpha(insert ACLA) > 0


def test_penalties():
    l1 = torch.tensor(0.1)
    e = torch.tensor(2e9, dtype=torch.float64)
    assert float(flops_penalty(l1, e, PenaltyConfig("linear", 0.5), 4e9)) == pytest.approx(0.35)
    assert float(flops_penalty(l1, e, PenaltyConfig("hinge", 2.0, 1.0), 4e9)) == pytest.approx(2.1)
    assert float(flops_penalty(l1, e, PenaltyConfig("hinge", 2.0, 3.0), 4e9)) == pytest.approx(0.1)
    import math

    v = float(flops_penalty(l1, e, PenaltyConfig("log", 0.0, 1.0, beta=0.6), 4e9))
    assert v == pytest.approx(0.1 * (math.log(2e9) / math.log(1e9)) ** 0.6)
    with pytest.raises(UsageError, match="target_gflops"):
        flops_penalty(l1, e, PenaltyConfig("hinge", 1.0), 4e9)


# ---------------------------------------------------------------------------- estimator
def test_every_alpha_receives_a_gradient():
    torch.manual_seed(0)
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    perturb(net.net)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    for _ in range(40):
        _, dec = net.sample(tau=1.0)
        torch.nn.functional.l1_loss(net(x, dec), y).backward()
    for label, a in net.gates.alpha.items():
        assert a.grad is not None and a.grad.abs().sum() > 0, label


def test_alpha_moves_towards_the_better_choice():
    """A point whose attention output is poisoned (huge bias) must learn to skip."""
    torch.manual_seed(0)
    cfg = SpaceConfig(backbone={"preset": "edsr-tiny"}, points=["b01"], ops=["skip", "rela"])
    net = Supernet(cfg, Task("sr", scale=2), LR)
    with torch.no_grad():
        net.net.points["b01"].ops["rela"].proj.bias.fill_(5.0)  # rela now destroys the features
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.05)
    x = torch.rand(2, 3, 8, 8)
    y = torch.nn.functional.interpolate(x, scale_factor=2)
    for _ in range(60):
        _, dec = net.sample(tau=1.0)
        opt.zero_grad()
        torch.nn.functional.l1_loss(net(x, dec), y).backward()
        opt.step()
    assert net.probs()["b01/op"][0] > 0.8


# ------------------------------------------------------------------------------- export
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
        from nas.network import inherit_weights

        inherit_weights(net.net, model)
        model.eval()
        with torch.no_grad():
            a = net(x, net.decisions(arch))
            b = model(x)
        assert torch.allclose(a, b, atol=1e-5), arch
        assert not torch.allclose(a, net(x, net.decisions(
            {c.label: c.values[0] for c in net.space.choices()})))
        assert measure_flops(model, x) == CostModel(spec.search_space(), task, LR).exact(arch)


def _spec_dict():
    return {"format_version": 1, "task": {"name": "sr", "scale": 2},
            "backbone": {"type": "edsr", "num_feat": 16, "num_block": 4, "res_scale": 1.0},
            "space": {"ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4, 9]},
            "choices": {"b00/op": "skip", "b01/op": "acla", "b01/keys@head": 2,
                        "b01/keys@b00": 9, "b02/op": "skip", "b03/op": "skip"}}


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(format_version=2), "format_version: expected 1, got 2"),
    (lambda d: d["choices"].update({"b01/keys@b00": 5}), "b01/keys@b00: 5 is not offered"),
    (lambda d: d["choices"].update({"b09/op": "acla"}), "unknown label 'b09/op'"),
    (lambda d: d["choices"].update({"b00/op": "aclaa"}), "b00/op: 'aclaa' is not offered"),
    (lambda d: d["backbone"].update(type="rcan"), "backbone.type"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
])
def test_malformed_archspec_one_line_error(tmp_path, mutate, needle):
    d = _spec_dict()
    ArchSpec.from_dict(d)  # the unmodified spec is valid
    mutate(d)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UsageError) as e:
        load_archspec(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_flops_command(tmp_path, capsys):
    from nas.cli import main

    path = tmp_path / "arch.json"
    path.write_text(json.dumps(_spec_dict()))
    assert main(["flops", str(path), "--lr-size", "20x30", "-f", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["analytic_flops"] == row["measured_flops"] > 0
    path.write_text("{not json")
    assert main(["flops", str(path)]) == 2
    assert "invalid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------------- search
def tiny_cfg(**over):
    sets = ["space.backbone={preset: edsr-tiny}", "data.images=[astronaut,chelsea,coffee,camera]",
            "data.patch_size=24", "data.batch_size=2", "data.val_fraction=0.5",
            "search.steps=6", "search.warmup_steps=2", "search.log_every=1",
            "search.checkpoint_every=2", "search.val_images=1", "search.lr_size=[12,16]"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets)


def _losses(path):
    return [(r["step"], r["loss"], r["l1"]) for r in map(json.loads, path.read_text().splitlines())]


def test_killed_search_resumes_exactly(tmp_path):
    cfg = tiny_cfg()
    full = SearchRun(cfg, tmp_path / "full", progress=False)
    res_full = full.run()
    # "killed" after step 3: the last checkpoint is at step 2, step 3's log line is dropped
    SearchRun(cfg, tmp_path / "cut", progress=False).run(stop_after=3)
    resumed = SearchRun(cfg, tmp_path / "cut", progress=False)
    res_cut = resumed.run()
    assert _losses(tmp_path / "full" / "log.jsonl") == _losses(tmp_path / "cut" / "log.jsonl")
    assert res_full.arch == res_cut.arch and res_full.psnr_db == res_cut.psnr_db
    spec = load_archspec(res_cut.arch_path)
    assert spec.cost["flops"] == CostModel(spec.search_space(), Task("sr", scale=2),
                                           (12, 16)).exact(spec.choices)


def test_resume_refuses_other_config(tmp_path):
    SearchRun(tiny_cfg(), tmp_path, progress=False).run(stop_after=2)
    with pytest.raises(UsageError, match="different config"):
        SearchRun(tiny_cfg(**{"search.lr": 0.1}), tmp_path, progress=False).run()


def test_large_lambda_pushes_gates_to_skip(tmp_path):
    cfg = tiny_cfg(**{"search.steps": 25, "search.warmup_steps": 0, "search.alpha_lr": 0.1,
                      "search.penalty.lambda": 50.0, "search.checkpoint_every": 25})
    run = SearchRun(cfg, tmp_path, progress=False)
    first = None

    def on_step(row):
        nonlocal first
        first = first or row["e_gflops"]

    res = run.run(on_step=on_step)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["e_gflops"] < rows[0]["e_gflops"]
    for label, p in rows[-1]["probs"].items():
        if label.endswith("/op"):
            assert p["skip"] > rows[0]["probs"][label]["skip"]
    assert all(v == "skip" for k, v in res.arch.items() if k.endswith("/op"))


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
