"""The supernet search (nas.engine.supernet_search): exact resume across both phases, a shared
supernet, alpha-independent weight paths, every alpha learning on every step, the FLOPs terms
at work, and budget derivation."""

from __future__ import annotations

import json

import pytest
import torch

from nas.engine.archspec import load_archspec
from nas.engine.flops import CostModel
from nas.engine.supernet_search import SupernetSearch, SupernetTraining, supernet_key
from nas.errors import UsageError
from nas.restoration.task import Task
from tests.conftest import tiny_cfg


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("cut", [3, 7], ids=["in-supernet-phase", "in-alpha-phase"])
def test_killed_search_resumes_exactly(tmp_path, cut):
    cfg = tiny_cfg()
    res_full = SupernetSearch(cfg, tmp_path / "full", progress=False).run()
    # "killed" after step `cut` (6 supernet steps, then 4 alpha steps; checkpoints every 2)
    assert SupernetSearch(cfg, tmp_path / "cut", progress=False).run(stop_after=cut) is None
    res_cut = SupernetSearch(cfg, tmp_path / "cut", progress=False).run()
    for name in ("supernet/supernet_log.jsonl", "log.jsonl"):
        assert _rows(tmp_path / "full" / name) == _rows(tmp_path / "cut" / name), name
    assert res_full.arch == res_cut.arch
    w_full = torch.load(tmp_path / "full" / "supernet" / "supernet.pt", weights_only=False)
    w_cut = torch.load(tmp_path / "cut" / "supernet" / "supernet.pt", weights_only=False)
    assert all(torch.equal(w_full["model"][k], w_cut["model"][k]) for k in w_full["model"])
    spec = load_archspec(res_cut.arch_path)
    assert spec.cost["flops"] == CostModel(spec.search_space(), Task("sr", scale=2),
                                           (12, 16)).exact(spec.choices)


def test_resume_refuses_other_config(tmp_path):
    SupernetSearch(tiny_cfg(), tmp_path, progress=False).run(stop_after=8)
    with pytest.raises(UsageError, match="different config"):
        SupernetSearch(tiny_cfg(**{"search.alpha_lr": 0.1}), tmp_path, progress=False).run()
    with pytest.raises(UsageError, match="supernet checkpoint of another config"):
        SupernetSearch(tiny_cfg(**{"search.lr": 0.1}), tmp_path, progress=False).run()


def test_trials_share_one_supernet(tmp_path):
    """Alpha settings do not change the weights: two searches that differ only in them train
    the supernet once, and the second search reads it."""
    a = tiny_cfg(**{"search.alpha_lr": 0.05})
    b = tiny_cfg(**{"search.alpha_lr": 0.2, "search.penalty.lambda": 1.0})
    c = tiny_cfg(**{"search.lr": 5e-4})
    assert supernet_key(a) == supernet_key(b) != supernet_key(c)
    shared = tmp_path / "supernets" / supernet_key(a)
    SupernetSearch(a, tmp_path / "a", progress=False, supernet_dir=shared).run()
    before = (shared / "supernet.pt").stat().st_mtime_ns
    steps = []
    SupernetSearch(b, tmp_path / "b", progress=False, supernet_dir=shared).run(
        on_step=lambda r: steps.append(r["phase"]))
    assert (shared / "supernet.pt").stat().st_mtime_ns == before
    assert set(steps) == {"alpha"}


def test_weight_paths_do_not_depend_on_alpha(tmp_path):
    """The supernet phase draws the largest path first, then uniform paths - the same draws
    whatever alpha is."""
    cfg = tiny_cfg(**{"search.supernet_steps": 8, "search.largest_path_steps": 3})
    tr = SupernetTraining(cfg, tmp_path / "a")
    with torch.no_grad():
        for p in tr.model.arch_parameters():
            p.fill_(0.0)
            p[0] = 30.0  # alpha certain of its first value: skip everywhere
    paths = []
    for _ in range(8):
        paths.append(tr.train_step()["path"])
    assert paths[:3] == ["largest"] * 3 and set(paths[3:]) == {"uniform"}
    assert tr.largest == tr.model.largest_arch()
    assert all(v != "skip" for k, v in tr.largest.items() if k.endswith("/op"))


def test_every_operator_logit_learns_on_every_alpha_step(tmp_path):
    """With all-candidate straight-through weights, the ACLA logit of every point gets a gradient
    on every alpha step, also when `skip` was drawn there."""
    from nas.engine.supernet_search import ArchitectureSearch

    cfg = tiny_cfg(**{"search.supernet_steps": 4, "search.largest_path_steps": 4})
    SupernetSearch(cfg, tmp_path, progress=False).run(stop_after=4)
    search = ArchitectureSearch(cfg, tmp_path / "a", tmp_path / "supernet" / "supernet.pt")
    search.model.net.eval()  # as in the alpha phase: the keep masks are deterministic
    for _ in range(3):
        search.opt.zero_grad()
        tau = 1.0
        _, dec = search.model.sample(tau, all_candidates=True)
        lq, hr = search.sampler.next()
        out = search.model(lq, dec)
        torch.nn.functional.l1_loss(out, hr).backward()
        for p in search.model.space:
            g = search.model.gates.alpha[p.op_label()].grad
            assert g is not None and g.abs().sum() > 0, (p.name, dec[p.name].op)
        # the forward value is the drawn architecture's
        arch = {p.op_label(): dec[p.name].op for p in search.model.space}
        for p in search.model.space:
            if dec[p.name].op == "acla":
                for r, k in zip(p.refs, dec[p.name].active_keys):
                    arch[p.key_label(r)] = k
        with torch.no_grad():
            plain = search.model(lq, search.model.decisions(arch))
        assert torch.allclose(out, plain, atol=1e-5)


def test_large_lambda_pushes_gates_to_skip(tmp_path):
    cfg = tiny_cfg(**{"search.alpha_steps": 25, "search.alpha_lr": 0.1,
                      "search.penalty.lambda": 50.0, "search.checkpoint_every": 25})
    res = SupernetSearch(cfg, tmp_path, progress=False).run()
    rows = _rows(tmp_path / "log.jsonl")
    assert rows[-1]["e_gflops"] < rows[0]["e_gflops"]
    for label, p in rows[-1]["probs"].items():
        if label.endswith("/op"):
            assert p["skip"] > rows[0]["probs"][label]["skip"]
    assert all(v == "skip" for k, v in res.arch.items() if k.endswith("/op"))


def test_budget_penalty_pulls_expected_flops_to_the_target_and_derive_respects_it(tmp_path):
    probe = tiny_cfg()
    from nas.engine.derive import flops_range
    from nas.engine.network import build_backbone
    from search_spaces.space import SearchSpace

    space = SearchSpace(probe.space, build_backbone(probe.space, probe.task).config.num_block)
    lo, hi = flops_range(space, CostModel(space, probe.task, (12, 16)))
    target = (lo + 0.4 * (hi - lo)) / 1e9
    cfg = tiny_cfg(**{"search.alpha_steps": 60, "search.alpha_lr": 0.1,
                      "search.penalty.kind": "budget", "search.penalty.lambda": 5.0,
                      "search.penalty.target_gflops": target, "search.checkpoint_every": 60})
    res = SupernetSearch(cfg, tmp_path, progress=False).run()
    rows = _rows(tmp_path / "log.jsonl")
    start, end = rows[0]["e_gflops"], rows[-1]["e_gflops"]
    assert abs(end - target) < abs(start - target)
    assert res.gflops <= target + 1e-12


def test_rerank_exports_the_candidate_the_supernet_scores_best(tmp_path):
    """search.rerank = 3: the 3 most probable architectures (derive_top) are scored with the
    supernet's weights on fixed val batches, recorded in the provenance, and the best exported;
    rerank = 0 exports the most probable one, which is candidate 0."""
    from nas.engine.derive import derive_top
    from nas.engine.rerank import inherited_psnr, rerank_batches
    from nas.engine.supernet_search import ArchitectureSearch

    cfg = tiny_cfg(**{"search.rerank": 3})
    res = SupernetSearch(cfg, tmp_path / "r", progress=False).run()
    ranked = load_archspec(res.arch_path).provenance["rerank"]
    assert [r["rank"] for r in ranked] == [0, 1, 2]
    best = max(ranked, key=lambda r: r["inherited_psnr_db"])
    assert res.arch == best["arch"]
    # the candidates are derive_top's, and their scores are reproducible from the same weights
    search = ArchitectureSearch(cfg, tmp_path / "r", tmp_path / "r" / "supernet" / "supernet.pt")
    search.try_resume()
    probs = search.model.probs_dict()
    assert [r["arch"] for r in ranked] == derive_top(search.model.space, probs, search.model.cost,
                                                     None, 3)
    again = inherited_psnr(search.model, [r["arch"] for r in ranked],
                           rerank_batches(cfg, search.splits, search.batch_size))
    assert again == pytest.approx([r["inherited_psnr_db"] for r in ranked], abs=1e-3)
    plain = SupernetSearch(tiny_cfg(), tmp_path / "p", progress=False,
                           supernet_dir=tmp_path / "r" / "supernet").run()
    assert plain.arch == ranked[0]["arch"]
    assert "rerank" not in load_archspec(plain.arch_path).provenance


def test_tensorboard_gets_losses_and_gate_probabilities(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(**{"search.tensorboard": True, "search.log_every": 2})
    SupernetSearch(cfg, tmp_path, progress=False).run()
    sup = EventAccumulator(str(tmp_path / "supernet" / "tb"))
    sup.Reload()
    assert {"supernet/l1", "supernet/psnr", "supernet/lr"} <= set(sup.Tags()["scalars"])
    assert [e.step for e in sup.Scalars("supernet/l1")] == [2, 4, 6]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"alpha/l1", "alpha/loss", "alpha/e_gflops", "alpha/tau"} <= tags
    rows = _rows(tmp_path / "log.jsonl")
    for label, probs in rows[-1]["probs"].items():  # the same numbers as the JSON log
        for value, p in probs.items():
            assert acc.Scalars(f"gates/{label}/{value}")[-1].value == pytest.approx(p, abs=1e-6)
