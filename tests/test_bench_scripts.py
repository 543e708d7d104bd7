"""The benchmark scripts of ``experiments/bench/`` run on the current code.

They are not unit tests (their numbers live in ``results/bench/``), but a script that no longer
runs is a defect: ``supernet_overhead.py`` once failed on a renamed config attribute. The quick
ones run here with tiny sizes into a temporary folder and their CSVs are checked for shape and
internal consistency (the reference row of every ratio is exactly 1, times positive); the slow
ones (whole searches, multi-process runs) are checked to import and parse ``--help``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "experiments" / "bench"


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_attention_scaling_and_search_step(tmp_path):
    run("attention_scaling.py", "--threads", "1", "--sizes", "16", "--repeats", "1",
        "--warmup", "1", "--step-repeats", "1", "--search-config",
        str(REPO / "experiments" / "quickstart.yaml"), "--step-samplers", "auto", "sparse",
        "--out", str(tmp_path))
    ops = rows(tmp_path / "attention_scaling.csv")
    assert {r["op"] for r in ops} == {"acla", "acla_sparse", "acla_grid_sample", "rela", "lcoa",
                                          "nla"}
    assert all(float(r["fwd_bwd_ms"]) > 0 and float(r["gflops_per_s"]) > 0 for r in ops)
    assert all(float(r["ratio_time_vs_nla"]) == 1.0 for r in ops if r["op"] == "nla")
    steps = rows(tmp_path / "search_step.csv")
    assert [r["arch"] for r in steps] == ["skip", "acla_everywhere_k4", "acla_everywhere_k9",
                                          "acla_everywhere_k4_sparse", "acla_everywhere_k9_sparse"]
    assert [r["acla_sampler"] for r in steps[3:]] == ["sparse", "sparse"]
    assert steps[1]["acla_sampler"] in ("fused", "sparse")  # fused where a C++ compiler is
    assert [r["note"] for r in ops if r["op"] == "acla_sparse"] == ["sampler sparse"]
    assert float(steps[0]["ratio_vs_skip"]) == 1.0
    gflops = [float(r["gflops_720p"]) for r in steps]
    assert gflops[0] < gflops[1] < gflops[2]  # more keys, more FLOPs
    assert gflops[1:3] == gflops[3:]  # the path does not change the counted FLOPs


def test_acla_breakdown(tmp_path):
    run("acla_breakdown.py", "--batch", "2", "--size", "8", "--channels", "8", "--keys", "4",
        "--repeats", "1", "--warmup", "1", "--out", str(tmp_path))
    table = rows(tmp_path / "acla_breakdown.csv")
    pieces = {(r["piece"], r["sampler"]) for r in table}
    paths = {r["sampler"] for r in table if r["piece"] == "module_train"}
    assert "sparse" in paths and len(paths) == len({"sparse", table[0]["sampler"]})
    per_path = {"sparse": ("gather", "masked_softmax_st", "keep_mask"),
                "fused": ("module_train_composite", "attend_core")}
    assert pieces == {(p, s) for s in paths for p in ("module_train", "module_eval", *per_path[s])} | {
        (p, "") for p in ("query_conv", "noise", "projections")}
    assert float(table[0]["share_of_module"]) == 1.0 and table[0]["piece"] == "module_train"
    assert all(float(r["ms"]) > 0 for r in table)


def test_acla_keys(tmp_path):
    run("acla_keys.py", "--size", "16", "--channels", "8", "--keys", "2", "9", "--keep", "1",
        "0.5", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path))
    table = rows(tmp_path / "acla_keys.csv")
    from search_spaces.operators.acla_fused import fused_available

    samplers = {"sparse", "grid_sample"} | ({"fused"} if fused_available() else set())
    assert {r["sampler"] for r in table} == samplers
    assert len(table) == len(samplers) * 2 * 3  # samplers x modes x (2 key counts + 1 keep)
    for r in table:
        if r["family"] == "keys" and r["keys_per_ref"] == "9":
            assert float(r["time_ratio"]) == 1.0 and float(r["sampled_flops_ratio"]) == 1.0
        if r["family"] == "keys":
            assert float(r["keep_measured"]) == 1.0
            assert float(r["sampled_gflops"]) == pytest.approx(float(r["analytic_gflops"]), abs=1e-4)
        else:  # dropping keys lowers the sampled FLOPs below the analytic count
            assert 0.0 < float(r["keep_measured"]) < 1.0
            assert float(r["sampled_gflops"]) < float(r["analytic_gflops"])


def test_supernet_overhead(tmp_path):
    run("supernet_overhead.py", "--threads", "1", "--archs", "2", "--repeats", "1",
        "--batch", "2", "--patch", "16", "--out", str(tmp_path))
    table = rows(tmp_path / "supernet_overhead.csv")
    assert [r["arch"] for r in table] == ["0", "1", "geomean"]
    assert all(float(r["time_ratio"]) > 0 and float(r["mem_ratio"]) > 0 for r in table)


def test_planted_problem_small_version(tmp_path):
    """The small fast version of the planted benchmark (issue #13): on a tiny copy of the task,
    stand-alone training shows the planted 2-key ACLA far above the plain backbone (it reads the
    pixel 12 columns away, beyond every conv path's reach), and one search seed derives the
    planted structure - one 2-key ACLA, skip elsewhere - from the supernet, the alpha gates and
    the budget. Which point it picks is the full benchmark's question (results/bench/planted.csv,
    3 validation seeds of every feasible architecture, 10 search seeds)."""
    common = ["--work", str(tmp_path / "w"), "--out", str(tmp_path), "--images", "12",
              "--image-size", "48", "--patch-size", "64", "--score-steps", "300",
              "--score-lr", "4e-3", "--threads", "2"]
    run("planted.py", "validate", *common, "--val-seeds", "1", "--archs", "plain", "b00k2",
        timeout=600)
    psnr = {r["arch"]: float(r["psnr_db"]) for r in rows(tmp_path / "planted_validation.csv")}
    assert set(psnr) == {"plain", "b00k2"}
    assert psnr["b00k2"] > psnr["plain"] + 10.0, psnr  # the copy is learned, not approximated
    # 800 + 300 steps: seeds 0-3 all derive one 2-key ACLA (400 + 150 left 2 of 4 at plain)
    run("planted.py", "search", *common, "--supernet-steps", "800", "--alpha-steps", "300",
        "--seeds", "1", "--methods", "ours", timeout=600)
    (found,) = rows(tmp_path / "planted_runs.csv")
    assert found["method"] == "ours" and found["one_2key"] == "1", found
    assert "+" not in found["arch"] and found["arch"].endswith("k2")
    run("planted.py", "rank", *common)
    ranked = rows(tmp_path / "planted_supernet_rank.csv")
    assert {r["arch"] for r in ranked} == {"plain", "b00k2", "b01k2", "b02k2", "b03k2"}
    assert [r["arch"] for r in ranked if r["picked"] == "1"] == [found["arch"]]
    run("planted.py", "report", *common)
    assert rows(tmp_path / "planted.csv")[0]["one_2key"] == "1"


@pytest.mark.parametrize("script", ["data_memory.py", "scaling.py", "quickstart_time.py",
                                    "search_quality.py", "acla_compile.py", "score_fidelity.py"])
def test_slow_scripts_parse_their_arguments(script):
    assert "usage:" in run(script, "--help", timeout=120).stdout


def test_every_script_is_covered():
    """A new benchmark script gets a smoke run or a --help check above
    (``search_quality_methods.py`` is a module of ``search_quality.py``, not a script)."""
    covered = {"attention_scaling.py", "acla_keys.py", "supernet_overhead.py", "planted.py",
               "acla_compile.py", "acla_breakdown.py",
               "data_memory.py",
               "scaling.py", "quickstart_time.py", "search_quality.py", "search_quality_methods.py",
               "score_fidelity.py"}
    assert {p.name for p in BENCH.glob("*.py")} == covered


def test_architecture_signal_matches_a_regression_f_test():
    """The blocked ANOVA of the search-quality report against an independent computation: the F
    test of nested least-squares models (seed only vs seed + architecture), on a planted table."""
    import numpy as np
    from scipy import stats

    sys.path.insert(0, str(BENCH))
    try:
        from search_quality_methods import architecture_signal
    finally:
        sys.path.remove(str(BENCH))
    rng = np.random.default_rng(0)
    a, s = 9, 4
    y = 26.0 + rng.normal(0, 0.03, (a, 1)) + rng.normal(0, 0.05, (1, s)) + rng.normal(0, 0.01, (a, s))
    arch_d = np.kron(np.eye(a), np.ones((s, 1)))  # rows: (arch, seed) in C order
    seed_d = np.kron(np.ones((a, 1)), np.eye(s))
    rss = [np.linalg.lstsq(x, y.ravel(), rcond=None)[1][0] for x in
           (seed_d, np.hstack([arch_d, seed_d[:, 1:]]))]
    df1, df2 = a - 1, (a - 1) * (s - 1)
    f_ref = ((rss[0] - rss[1]) / df1) / (rss[1] / df2)
    got = architecture_signal(y)
    assert abs(got["anova_f"] - f_ref) < 1e-8 * f_ref
    assert abs(got["anova_p"] - stats.f.sf(f_ref, df1, df2)) < 1e-12
    assert abs(got["residual_sd_db"] - np.sqrt(rss[1] / df2)) < 1e-12
    assert got["anova_f"] > 20 and got["anova_p"] < 1e-6  # planted effects 3x the noise
    assert 0.01 < got["arch_sd_db"] < 0.06 and got["seed_rank_corr"] > 0.8
    noise = architecture_signal(26.0 + rng.normal(0, 0.01, (27, 3)))
    assert noise["anova_p"] > 0.01 and noise["arch_sd_db"] < 0.005


def test_seeds_for_power_matches_a_simulation():
    """The seed count the report says the ground truth needs, checked by simulating the
    analysis of variance at that count and one seed fewer."""
    import numpy as np
    from scipy import stats

    sys.path.insert(0, str(BENCH))
    try:
        from search_quality_methods import seeds_for_power
    finally:
        sys.path.remove(str(BENCH))
    a, sd_a, sd_e = 27, 0.005, 0.0127
    n = seeds_for_power(a, sd_a, sd_e)
    assert n is not None and 3 < n < 30
    rng = np.random.default_rng(1)

    def power(seeds: int, runs: int = 600) -> float:
        hits = 0
        for _ in range(runs):
            y = rng.normal(0, sd_a, (a, 1)) + rng.normal(0, sd_e, (a, seeds))
            ms_a = seeds * y.mean(1).var(ddof=1)
            res = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
            ms_e = (res ** 2).sum() / ((a - 1) * (seeds - 1))
            hits += stats.f.sf(ms_a / ms_e, a - 1, (a - 1) * (seeds - 1)) < 0.05
        return hits / runs

    assert power(n) > 0.75 and power(n - 1) < 0.85  # 600 runs: SE of a power about 0.016
    assert seeds_for_power(a, 0.0, sd_e) is None
