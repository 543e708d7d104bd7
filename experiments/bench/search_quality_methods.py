"""The ``methods`` and ``report`` stages of ``search_quality.py`` (see its docstring)."""

from __future__ import annotations

import copy
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from nas.config import load_config
from nas.engine.scoring import ScoreCache, arch_key, load_splits, protocol_key
from nas.study import pareto
from nas.study.objective import study_space

RUN_COLUMNS = ["method", "seed", "arch_key", "own_psnr_db", "gflops", "seconds"]
PAPER = "paper"


def _rows(path: Path) -> list[dict]:
    from search_quality import read_rows

    return read_rows(path)


def _append(path: Path, row: dict, columns=RUN_COLUMNS) -> None:
    from search_quality import append_row

    append_row(path, columns, row)


def ground_truth_table(out: Path) -> dict[str, dict]:
    """``{arch_key: {"arch", "gflops", "scores": {seed: psnr}, "seconds": {seed: s}}}``."""
    gt: dict[str, dict] = {}
    for r in _rows(out / "search_quality_ground_truth.csv"):
        g = gt.setdefault(r["arch_key"], {"arch": json.loads(r["arch"]), "gflops": float(r["gflops"]),
                                          "scores": {}, "seconds": {}})
        g["scores"][int(r["seed"])] = float(r["psnr_db"])
        g["seconds"][int(r["seed"])] = float(r["seconds"])
    return gt


def common_seeds(gt: dict) -> list[int]:
    """The ground-truth seeds every architecture was scored with."""
    return sorted(set.intersection(*(set(g["scores"]) for g in gt.values())))


def held_out_truth(gt: dict) -> tuple[list[int], dict[str, float]]:
    """The seeds the truth is the mean of, and that mean (PSNR, dB) per architecture key.

    Methods pick by seed 0's scores (their own); valuing those picks at means that include seed 0
    would reward seed 0's noise, so the truth is the mean of the other common seeds when there
    are at least two of them, else of all common seeds."""
    seeds = common_seeds(gt)
    held = [s for s in seeds if s != 0]
    if len(held) < 2:
        held = seeds
    return held, {k: statistics.fmean(g["scores"][s] for s in held) for k, g in gt.items()}


def load_ours_supernet(work: Path, cfg, seed: int):
    """The trained supernet of the ``ours`` study of search seed ``seed`` in ``work``, and the
    config with that seed. Returns ``(cfg, Supernet)``."""
    from nas.engine.supernet import Supernet
    from nas.engine.supernet_search import supernet_key

    c = copy.deepcopy(cfg)
    c.seed = seed
    weights = work / f"ours_s{seed}" / "supernets" / supernet_key(c) / "supernet.pt"
    sn = Supernet(c.space, c.task)
    sn.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False)["model"])
    return c, sn


# ---------------------------------------------------------------------------------- methods
def _ours(args, cfg, seed: int, gt: dict) -> tuple[list[dict], float]:
    """One study of our search; returns (rows, search seconds)."""
    from nas.study.noise import PROTOCOL_ATTR
    from nas.study.run import open_study, prepare_study, run_study
    from nas.study.storage import parse_storage

    c = copy.deepcopy(cfg)
    c.seed = seed
    c.hpo = {**c.hpo, "seed": seed}
    out = args.work / f"ours_s{seed}"
    setup = prepare_study(c, str(args.config))
    study, storage, _ = open_study(setup, parse_storage(None, out), f"ours_s{seed}", out)
    sid = storage.get_study_id_from_name(study.study_name)
    proto = storage.get_study_system_attrs(sid)[PROTOCOL_ATTR]
    assert proto == protocol_key(c)
    for g in gt.values():  # the same protocol: the study would compute exactly these numbers
        for s, v in g["scores"].items():
            storage.set_study_system_attr(sid, ScoreCache.key(proto, g["arch"], s),
                                          {"psnr_db": v, "seconds": 0.0})
    t0 = time.perf_counter()
    run_study(setup, study, storage, out)
    seconds = time.perf_counter() - t0
    rows = {}
    for t in study.get_trials():
        if t.state.name == "COMPLETE":
            rows[t.user_attrs["arch_key"]] = {"own_psnr_db": t.values[0], "gflops": t.values[1]}
    return [{"arch_key": k, **v} for k, v in rows.items()], seconds


RANK_COLUMNS = ["seed", "arch_key", "inherited_psnr_db"]


def supernet_ranking(args, cfg, seed: int, gt: dict) -> None:
    """The trained supernet of ``ours`` seed ``seed``: every architecture's PSNR (dB) with
    inherited weights, on the batches the study's own rerank uses
    (:func:`nas.engine.rerank.rerank_batches`), appended to ``search_quality_supernet_rank.csv``.
    The report turns them into Kendall tau against the held-out ground truth."""
    from nas.engine.rerank import inherited_psnr, rerank_batches

    c, sn = load_ours_supernet(args.work, cfg, seed)
    batches = rerank_batches(c, load_splits(c), c.search.alpha_batch_size or c.data.batch_size)
    keys = sorted(gt)
    pred = inherited_psnr(sn, [gt[k]["arch"] for k in keys], batches)
    for k, v in zip(keys, pred):
        _append(args.out / "search_quality_supernet_rank.csv",
                {"seed": seed, "arch_key": k, "inherited_psnr_db": f"{v:.6f}"}, RANK_COLUMNS)


def rank_missing(args) -> None:
    """``supernet-rank`` stage: :func:`supernet_ranking` for every ``ours`` seed of the runs
    table whose supernet is still in ``--work`` and has no rows yet."""
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    gt = ground_truth_table(args.out)
    have = {int(r["seed"]) for r in _rows(args.out / "search_quality_supernet_rank.csv")}
    seeds = sorted({int(r["seed"]) for r in _rows(args.out / "search_quality_runs.csv")
                    if r["method"] == "ours"} - have)
    for seed in seeds:
        if not (args.work / f"ours_s{seed}").is_dir():
            print(f"ours seed {seed}: no run folder in {args.work}; skipped", flush=True)
            continue
        supernet_ranking(args, cfg, seed, gt)
        print(f"ours seed {seed}: supernet ranking written", flush=True)


def _nni(args, cfg, seed: int, strategy: str, lam: float, gt: dict) -> tuple[dict, float]:
    from nas.adapters.nni import run_nni

    c = copy.deepcopy(cfg)
    c.seed = seed
    c.search.penalty.kind = "linear"
    c.search.penalty.lam = lam
    c.search.penalty.target_gflops = None
    space = study_space(c)
    cache = ScoreCache()
    proto = protocol_key(c)
    for g in gt.values():
        for s, v in g["scores"].items():
            cache.put(ScoreCache.key(proto, g["arch"], s), {"psnr_db": v, "seconds": 0.0})
    t0 = time.perf_counter()
    spec = run_nni(strategy, c, args.work / f"{strategy}_l{lam:g}_s{seed}", penalty=lam > 0,
                   cache=cache)
    seconds = time.perf_counter() - t0
    arch = canonical(space, spec.choices)
    k = arch_key(arch)
    return {"arch_key": k, "own_psnr_db": gt[k]["scores"][0], "gflops": gt[k]["gflops"]}, seconds


def canonical(space, arch):
    from nas.engine.network import canonical_arch

    return canonical_arch(space, space.validate(arch))


def run_methods(args) -> None:
    """Run every method for every search seed (missing ones only)."""
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    gt = ground_truth_table(args.out)
    if not gt:
        raise SystemExit("run the ground-truth stage first")
    runs = args.out / "search_quality_runs.csv"
    done = {(r["method"], int(r["seed"])) for r in _rows(runs)}
    space = study_space(cfg)
    paper = {}
    for p in space:
        paper[p.op_label()] = "acla"
        paper.update({p.key_label(r): max(p.keys) for r in p.refs})
    paper_key = arch_key(canonical(space, paper))
    # the cost of one scoring run, for random search's equal-compute budget: the mean run time
    # of the ground-truth seeds given (--cost-seeds), so that runs timed beside other jobs do
    # not change the budget
    cost_seeds = set(args.cost_seeds) if args.cost_seeds else None
    score_seconds = statistics.fmean(
        t for g in gt.values() for s, t in g["seconds"].items()
        if cost_seeds is None or s in cost_seeds)
    args.work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.methods)

    def todo(method: str, seed: int) -> bool:
        return method in wanted and (method, seed) not in done

    for seed in (args.seeds if args.seeds else range(args.search_seeds)):
        if todo("ours", seed):
            rows, seconds = _ours(args, cfg, seed, gt)
            for r in rows:
                _append(runs, {"method": "ours", "seed": seed, **r, "seconds": f"{seconds:.1f}"})
            supernet_ranking(args, cfg, seed, gt)
            print(f"ours seed {seed}: {len(rows)} architectures, {seconds:.0f} s", flush=True)
        ours = [r for r in _rows(runs) if r["method"] == "ours" and int(r["seed"]) == seed]
        if todo("random", seed):
            # equal compute: ours scored len(ours) architectures and spent its search time on top
            n = len(ours) + round(float(ours[0]["seconds"]) / score_seconds)
            rng = random.Random(1000 + seed)
            keys = sorted(gt)
            for k in rng.sample(keys, min(n, len(keys))):
                _append(runs, {"method": "random", "seed": seed, "arch_key": k,
                               "own_psnr_db": gt[k]["scores"][0], "gflops": gt[k]["gflops"],
                               "seconds": f"{n * score_seconds:.1f}"})
            print(f"random seed {seed}: {min(n, len(keys))} architectures", flush=True)
        if todo(PAPER, seed):
            _append(runs, {"method": PAPER, "seed": seed, "arch_key": paper_key,
                           "own_psnr_db": gt[paper_key]["scores"][0],
                           "gflops": gt[paper_key]["gflops"], "seconds": "0"})
        for strategy in ("darts", "gumbel"):
            name = f"nni-{strategy}"
            if not todo(name, seed):
                continue
            total = 0.0
            for lam in args.nni_lambdas:
                row, seconds = _nni(args, cfg, seed, strategy, lam, gt)
                total += seconds
                _append(runs, {"method": name, "seed": seed, **row, "seconds": f"{total:.1f}"})
            print(f"{name} seed {seed}: {total:.0f} s", flush=True)


# ----------------------------------------------------------------------------------- report
def architecture_signal(scores) -> dict:
    """Can the ground truth tell its architectures apart at all?

    Two-way analysis of variance of an ``(architectures, seeds)`` table of PSNR (dB) with the
    seed as a block (every seed trains every architecture with the same initialisation and patch
    stream, so a seed's common offset is removed): ``F`` = mean square between architectures /
    residual mean square, with ``(a - 1, (a - 1)(s - 1))`` degrees of freedom. Under "no
    architecture differs" F is about 1; with real differences it grows with the number of seeds.
    The range of the means is no such test: with 27 architectures, noise alone spans about 4
    standard errors.

    Returns:
        ``anova_f``, ``anova_p``, ``residual_sd_db`` (one score's noise after the seed's offset),
        ``arch_sd_db`` (SD of the true architecture effects implied by F; 0 when F <= 1) and
        ``seed_rank_corr`` (mean Spearman correlation of the architectures' scores between two
        seeds: how well one seed ranks them for another).
    """
    import numpy as np
    from scipy import stats

    y = np.asarray(scores, dtype=float)
    a, s = y.shape
    m = y.mean()
    ss_arch = s * ((y.mean(1) - m) ** 2).sum()
    ss_seed = a * ((y.mean(0) - m) ** 2).sum()
    ss_res = ((y - m) ** 2).sum() - ss_arch - ss_seed
    df_arch, df_res = a - 1, (a - 1) * (s - 1)
    ms_arch, ms_res = ss_arch / df_arch, ss_res / df_res
    f = ms_arch / ms_res
    corr = [stats.spearmanr(y[:, i], y[:, j]).statistic for i in range(s) for j in range(i + 1, s)]
    arch_sd = float(np.sqrt(max(ms_arch - ms_res, 0.0) / s))
    return {"anova_f": float(f), "anova_p": float(stats.f.sf(f, df_arch, df_res)),
            "residual_sd_db": float(np.sqrt(ms_res)), "arch_sd_db": arch_sd,
            "seed_rank_corr": float(np.mean(corr)),
            "seeds_for_80pct_power": seeds_for_power(a, arch_sd, float(np.sqrt(ms_res)))}


def seeds_for_power(archs: int, arch_sd: float, residual_sd: float, alpha: float = 0.05,
                    power: float = 0.8, most: int = 1000) -> int | None:
    """The number of seeds per architecture at which the analysis of variance of
    :func:`architecture_signal` detects architecture effects of SD ``arch_sd`` (dB) over a
    residual noise ``residual_sd`` with the given power at level ``alpha`` (noncentral F,
    noncentrality ``n (a - 1) arch_sd^2 / residual_sd^2``); ``None`` if no effect was measured
    or more than ``most`` seeds would be needed."""
    from scipy import stats

    if not arch_sd > 0:
        return None
    for n in range(2, most + 1):
        d1, d2 = archs - 1, (archs - 1) * (n - 1)
        nc = n * (archs - 1) * arch_sd ** 2 / residual_sd ** 2
        if stats.ncf.sf(stats.f.isf(alpha, d1, d2), d1, d2, nc) >= power:
            return n
    return None


def one_run_kendall(gt: dict, keys: list[str]) -> list[float]:
    """Kendall tau of one stand-alone run per architecture against the truth, once per seed:
    seed ``j``'s scores against the mean of the other seeds (the rank fidelity of the study's
    one-seed score, ``score.seeds: 1``)."""
    from scipy.stats import kendalltau

    seeds = common_seeds(gt)
    out = []
    for j in seeds:
        rest = [s for s in seeds if s != j]
        truth = [statistics.fmean(gt[k]["scores"][s] for s in rest) for k in keys]
        out.append(float(kendalltau([gt[k]["scores"][j] for k in keys], truth).statistic))
    return out


def _hv(points, ref) -> float:
    return pareto.hypervolume_2d(points, ref) if points else 0.0


def report(args) -> None:
    """The summary table and plot (see the module docstring of search_quality.py)."""
    import numpy as np

    from nas.engine.scoring import mean_and_se, pooled_seed_sd

    cfg = load_config(args.config)
    gt = ground_truth_table(args.out)
    space = study_space(cfg)
    plain = arch_key(canonical(space, {p.op_label(): "skip" for p in space}))
    keys = sorted(gt)
    held_out, means = held_out_truth(gt)
    pts = [(means[k], gt[k]["gflops"]) for k in keys]
    ref = (min(means.values()) - 0.005, max(g["gflops"] for g in gt.values()) * 1.02)
    true_front = [k for k, on in zip(keys, pareto.pareto_mask(pts)) if on]
    hv_true = _hv([(means[k], gt[k]["gflops"]) for k in true_front], ref)
    # noise: pooled seed SD of one architecture, and of the paired difference to the plain net
    sd_arch = pooled_seed_sd([list(g["scores"].values()) for g in gt.values()])
    diffs = [[g["scores"][s] - gt[plain]["scores"][s] for s in g["scores"]] for k, g in gt.items()
             if k != plain]
    sd_paired = pooled_seed_sd(diffs)
    n_seeds = len(gt[plain]["scores"])
    spread = max(means.values()) - min(means.values())
    budgets = sorted({g["gflops"] for g in gt.values()})
    best_at = {b: max(means[k] for k in keys if gt[k]["gflops"] <= b) for b in budgets}
    runs = _rows(args.out / "search_quality_runs.csv")
    by: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        by.setdefault((r["method"], int(r["seed"])), []).append(r)
    per_run = {}
    for (method, seed), rows in by.items():
        own = {r["arch_key"]: float(r["own_psnr_db"]) for r in rows}
        own.setdefault(plain, gt[plain]["scores"][0])  # every method knows the plain backbone
        ks = list(own)
        front = [k for k, on in zip(ks, pareto.pareto_mask([(own[k], gt[k]["gflops"]) for k in ks]))
                 if on]
        hv = _hv([(means[k], gt[k]["gflops"]) for k in front], ref) / hv_true
        regrets = []
        for b in budgets:
            within = [k for k in ks if gt[k]["gflops"] <= b]
            pick = max(within, key=lambda k: own[k])
            regrets.append(best_at[b] - means[pick])
        per_run[(method, seed)] = {"hv_ratio": hv, "regret": float(np.mean(regrets)),
                                   "archs": len(ks), "seconds": float(rows[0]["seconds"])}
    from scipy.stats import kendalltau

    pred: dict[int, dict[str, float]] = {}
    for r in _rows(args.out / "search_quality_supernet_rank.csv"):
        pred.setdefault(int(r["seed"]), {})[r["arch_key"]] = float(r["inherited_psnr_db"])
    kt = {s: float(kendalltau([p[k] for k in keys], [means[k] for k in keys]).statistic)
          for s, p in pred.items() if set(p) == set(keys)}
    # the same statistic for one stand-alone training of every architecture: seed 0 (what the
    # methods saw) against the truth, and each seed against the mean of the others
    tau_one_seed = float(kendalltau([gt[k]["scores"][0] for k in keys],
                                    [means[k] for k in keys]).statistic)
    tau_loo = one_run_kendall(gt, keys)
    methods = sorted({m for m, _ in per_run}, key=lambda m: (m != "ours", m))
    table = []
    rnd = [v["hv_ratio"] for (m, _), v in per_run.items() if m == "random"]
    for m in methods:
        vals = [v for (mm, _), v in per_run.items() if mm == m]
        hv_m, hv_se = mean_and_se([v["hv_ratio"] for v in vals])
        rg_m, rg_se = mean_and_se([v["regret"] for v in vals])
        wins = [(a > b) + 0.5 * (a == b) for a in (v["hv_ratio"] for v in vals) for b in rnd]
        row = {"method": m, "search_seeds": len(vals), "hv_ratio_mean": hv_m, "hv_ratio_se": hv_se,
               "regret_db_mean": rg_m, "regret_db_se": rg_se,
               "p_beats_random": float(np.mean(wins)) if rnd and m != "random" else math.nan,
               "archs_scored_mean": float(np.mean([v["archs"] for v in vals])),
               "seconds_mean": float(np.mean([v["seconds"] for v in vals])),
               "kendall_tau_mean": float(np.mean(list(kt.values()))) if m == "ours" and kt else math.nan,
               "kendall_tau_se": mean_and_se(list(kt.values()))[1] if m == "ours" and len(kt) > 1
               else math.nan}
        table.append(row)
    seeds = common_seeds(gt)
    signal = architecture_signal([[gt[k]["scores"][s] for s in seeds] for k in keys])
    # the ceiling of any method that trusts one seed's scores: every architecture scored once
    one_seed = {k: gt[k]["scores"][0] for k in keys}
    ceiling = [k for k, on in zip(keys, pareto.pareto_mask([(one_seed[k], gt[k]["gflops"])
                                                             for k in keys])) if on]
    header = {"ground_truth_archs": len(keys), "gt_seeds": n_seeds, "truth_seeds": held_out,
              "spread_db": spread,
              "seed_sd_db": sd_arch, "paired_sd_db": sd_paired,
              "spread_over_paired_se": spread / (sd_paired * math.sqrt(2 / len(held_out))),
              **signal,
              "kendall_tau_seed0_vs_truth": tau_one_seed,
              "kendall_tau_one_run_mean": mean_and_se(tau_loo)[0],
              "kendall_tau_one_run_se": mean_and_se(tau_loo)[1],
              "hv_ratio_all_archs_seed0": _hv([(means[k], gt[k]["gflops"]) for k in ceiling], ref)
              / hv_true,
              "true_front": len(true_front), "hv_true": hv_true, "ref_point": list(ref)}
    import pandas as pd

    df = pd.DataFrame(table)
    path = args.out / "search_quality.csv"
    with path.open("w") as f:
        f.write("# " + json.dumps(header) + "\n")
        df.to_csv(f, index=False, float_format="%.5g")
    pd.DataFrame([{"method": m, "seed": s, **v} for (m, s), v in sorted(per_run.items())]).to_csv(
        args.out / "search_quality_per_seed.csv", index=False, float_format="%.5g")
    print(json.dumps(header, indent=1))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    from nas.study.run import axis_labels

    _plot(args.out / "search_quality.png", gt, means, true_front, by, plain, header, axis_labels(cfg))


def _plot(path: Path, gt, means, true_front, by, plain, header, labels: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.engine.scoring import mean_and_se

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for k, g in gt.items():
        _, se = mean_and_se([g["scores"][s] for s in header["truth_seeds"]])
        on = k in true_front
        ax.errorbar(g["gflops"], means[k], yerr=se, fmt="o", ms=6 if on else 4,
                    color="tab:blue" if on else "0.7", ecolor="0.8", zorder=3 if on else 2)
    tf = sorted(true_front, key=lambda k: gt[k]["gflops"])
    xs, ys = [gt[k]["gflops"] for k in tf], [means[k] for k in tf]
    ax.step(xs + [max(g["gflops"] for g in gt.values())], ys + ys[-1:], where="post", c="tab:blue",
            label=f"true front (ground-truth means of seeds {header['truth_seeds']}, +-1 SE)")
    marks = {"ours": ("s", "tab:red"), "random": ("^", "tab:green"), "nni-darts": ("v", "tab:purple"),
             "nni-gumbel": ("D", "tab:brown"), PAPER: ("*", "tab:orange")}
    for m, (mk, col) in marks.items():
        found = {r["arch_key"] for (mm, _), rows in by.items() if mm == m for r in rows}
        if found:
            ax.scatter([gt[k]["gflops"] for k in found], [means[k] for k in found], marker=mk,
                       s=60, facecolors="none", edgecolors=col, label=f"{m} (all seeds)", zorder=4)
    ax.set_xlabel(labels["gflops"])
    ax.set_ylabel("ground-truth " + labels["psnr_db"].replace("score ", ""))
    ax.set_title(f"search quality: spread {header['spread_db']:.3f} dB, paired noise SD "
                 f"{header['paired_sd_db']:.4f} dB; architectures differ? ANOVA "
                 f"p = {header['anova_p']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
