"""The bilevel search: exact resume, config checks, the FLOPs penalty at work (nas.engine.supernet_search)."""

from __future__ import annotations

import json

import pytest

from nas.engine.archspec import load_archspec
from nas.engine.flops import CostModel
from nas.engine.supernet_search import SupernetSearch
from nas.errors import UsageError
from nas.restoration.task import Task
from tests.conftest import tiny_cfg


def _losses(path):
    return [(r["step"], r["loss"], r["l1"]) for r in map(json.loads, path.read_text().splitlines())]


def test_killed_search_resumes_exactly(tmp_path):
    cfg = tiny_cfg()
    full = SupernetSearch(cfg, tmp_path / "full", progress=False)
    res_full = full.run()
    # "killed" after step 3: the last checkpoint is at step 2, step 3's log line is dropped
    SupernetSearch(cfg, tmp_path / "cut", progress=False).run(stop_after=3)
    resumed = SupernetSearch(cfg, tmp_path / "cut", progress=False)
    res_cut = resumed.run()
    assert _losses(tmp_path / "full" / "log.jsonl") == _losses(tmp_path / "cut" / "log.jsonl")
    assert res_full.arch == res_cut.arch and res_full.psnr_db == res_cut.psnr_db
    spec = load_archspec(res_cut.arch_path)
    assert spec.cost["flops"] == CostModel(spec.search_space(), Task("sr", scale=2),
                                           (12, 16)).exact(spec.choices)


def test_resume_refuses_other_config(tmp_path):
    SupernetSearch(tiny_cfg(), tmp_path, progress=False).run(stop_after=2)
    with pytest.raises(UsageError, match="different config"):
        SupernetSearch(tiny_cfg(**{"search.lr": 0.1}), tmp_path, progress=False).run()


def test_large_lambda_pushes_gates_to_skip(tmp_path):
    cfg = tiny_cfg(**{"search.steps": 25, "search.warmup_steps": 0, "search.alpha_lr": 0.1,
                      "search.penalty.lambda": 50.0, "search.checkpoint_every": 25})
    run = SupernetSearch(cfg, tmp_path, progress=False)
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
