"""Our search against its peers at an equal compute budget, in one run.

Methods, each given the same budget of ``--budget`` optimizer steps (batches) to *find*
architectures on the built-in photos (SR x2, the space of ``--config``):

* ``acla-nas``: our supernet search (straight-through Gumbel gates, differentiable E[FLOPs]),
  ``--ours-lambdas`` searches with different FLOPs weights, ``budget / len(lambdas)`` steps each;
* ``random``: Optuna ``RandomSampler`` over the same labels, ``--random-archs`` architectures,
  each fixed network trained for ``budget / random_archs`` steps and scored on held-out crops
  (this search phase only ranks them; all of them go to the final retrain);
* ``nni-darts`` / ``nni-gumbel``: NNI 3.0's ``DARTS`` and ``GumbelDARTS`` one-shot strategies on
  the same space through :mod:`nas.adapters.nni` (accuracy only: NNI's penalty sends no gradient to
  alpha), ``budget`` steps each; skipped with the reason recorded when NNI is not installed;
* fixed baselines (no search cost): ``no_attention``, ``acla_everywhere`` (every point, largest
  key count from every reference) and ``acla_paper`` (the ACLA paper's placement: the body split
  into 4 stages, ACLA after each stage reading the head and every earlier stage output, 9 keys
  each).

Every architecture found (duplicates trained once) is then trained from scratch with the same
short retrain (``--retrain-steps``) and scored on Set5 x2 (Y, crop 2); GFLOPs are exact at a
1280x720 output. Per method: its front (PSNR vs GFLOPs), the hypervolume against one reference
point shared by all methods, and the wall time of its search phase.

Outputs: ``results/bench/peer_comparison.csv`` (one row per method and architecture, with the
method's hypervolume and search seconds) and ``results/bench/peer_comparison.png`` (all fronts on
one axis).

Usage::

    python experiments/bench/peer_comparison.py [--budget 300] [--retrain-steps 2000]
        [--config experiments/bench/peer_comparison.yaml] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from nas.engine.cost import CostModel  # noqa: E402

from nas.config import load_config  # noqa: E402
from nas.engine.archspec import ArchSpec, backbone_block, space_block  # noqa: E402
from nas.engine.network import canonical_arch  # noqa: E402
from nas.engine.retrain import retrain  # noqa: E402
from nas.engine.supernet_search import SupernetSearch  # noqa: E402
from nas.restoration.data import resolve_data_root  # noqa: E402
from nas.study.pareto import hypervolume_2d, pareto_mask  # noqa: E402
from search_spaces.space import SKIP, SearchSpace  # noqa: E402


def spec_for(cfg, space: SearchSpace, arch: dict, method: str) -> ArchSpec:
    """An ArchSpec of ``arch`` in ``cfg``'s space, with its exact cost."""
    from nas.engine.network import build_backbone

    task = cfg.task_obj()
    arch = canonical_arch(space, space.validate(arch))
    cm = CostModel(space, task)
    flops = cm.exact(arch)
    return ArchSpec(task=task.to_dict(),
                    backbone=backbone_block(build_backbone(cfg.space, task).config),
                    space=space_block(cfg.space), choices=arch,
                    cost={"flops": flops, "gflops": flops / 1e9, "lr_size": list(cm.lr_size)},
                    provenance={"method": method})


def paper_placement(cfg, num_block: int):
    """The ACLA paper's placement as a one-architecture space and its choices."""
    stage = num_block // 4
    points = [f"b{(i + 1) * stage - 1:02d}" for i in range(4)]
    refs = {p: ["head", *points[:i]] for i, p in enumerate(points)}
    pc = copy.deepcopy(cfg)
    pc.space.points, pc.space.refs, pc.space.keys = points, refs, [9]
    pc.space.ops = [SKIP, "acla"]
    space = SearchSpace(pc.space, num_block)
    return pc, space, {f"{p}/op": "acla" for p in points}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "experiments/bench/peer_comparison.yaml"))
    p.add_argument("--budget", type=int, default=300, help="optimizer steps per method")
    p.add_argument("--ours-lambdas", type=float, nargs="+", default=[0.0, 0.02, 0.5])
    p.add_argument("--random-archs", type=int, default=3)
    p.add_argument("--retrain-steps", type=int, default=2000)
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", nargs="+",
                   default=["acla-nas", "random", "nni-darts", "nni-gumbel", "baselines"])
    p.add_argument("--work", type=Path, default=Path("/tmp/acla-nas-peer"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = resolve_data_root(args.data_root or os.environ.get("ACLA_NAS_DATA")
                             or ROOT.parent / "shared" / "data")
    cfg = load_config(args.config)
    cfg.search.log_every = 10
    cfg.search.checkpoint_every = 10**9
    task = cfg.task_obj()
    from nas.engine.network import build_backbone

    num_block = build_backbone(cfg.space, task).config.num_block
    space = SearchSpace(cfg.space, num_block)
    found: list[tuple[str, ArchSpec]] = []  # (method, spec)
    search_seconds: dict[str, float] = {}
    notes: dict[str, str] = {}

    if "acla-nas" in args.methods:
        t0 = time.perf_counter()
        steps = args.budget // len(args.ours_lambdas)
        for lam in args.ours_lambdas:
            c = copy.deepcopy(cfg)
            c.search.steps = steps
            c.search.warmup_steps = min(c.search.warmup_steps, steps // 3)
            c.search.tau.steps = steps
            c.search.penalty.lam = lam
            res = SupernetSearch(c, args.work / f"ours_lambda_{lam:g}", progress=False).run()
            found.append(("acla-nas", spec_for(cfg, space, res.arch, f"acla-nas lambda={lam:g}")))
        search_seconds["acla-nas"] = time.perf_counter() - t0

    if "random" in args.methods:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t0 = time.perf_counter()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed),
                                    direction="maximize")
        steps = args.budget // args.random_archs
        for i in range(args.random_archs):
            trial = study.ask()
            arch = {c.label: trial.suggest_categorical(c.label, list(c.values))
                    for c in space.choices()}
            spec = spec_for(cfg, space, arch, f"random #{i}")
            c = copy.deepcopy(cfg)
            c.retrain.steps, c.retrain.val_every = steps, steps
            c.retrain.checkpoint_every, c.retrain.eval_sets = steps, []
            r = retrain(spec, c, args.work / f"random_{i}", data_root=None, progress=False)
            study.tell(trial, r["best_val_psnr_db"])
            found.append(("random", spec))
        search_seconds["random"] = time.perf_counter() - t0

    for method, strategy in (("nni-darts", "darts"), ("nni-gumbel", "gumbel")):
        if method not in args.methods:
            continue
        try:
            from nas.adapters.nni import run_nni

            t0 = time.perf_counter()
            spec = run_nni(strategy, cfg, args.work / method, steps=args.budget)
            search_seconds[method] = time.perf_counter() - t0
            spec.provenance["method"] = method
            found.append((method, spec))
        except Exception as e:  # noqa: BLE001 - NNI missing or failing is reported, not fatal
            notes[method] = f"skipped: {str(e).splitlines()[0][:160]}"
            print(f"{method}: {notes[method]}")

    if "baselines" in args.methods:
        for name in ("no_attention", "acla_everywhere"):
            op = SKIP if name == "no_attention" else "acla"
            arch = {}
            for pt in space:
                arch[pt.op_label()] = op
                arch.update({pt.key_label(r): max(pt.keys) for r in pt.refs})
            arch = {k: v for k, v in arch.items() if k in {c.label for c in space.choices()}}
            found.append((name, spec_for(cfg, space, arch, name)))
            search_seconds[name] = 0.0
        pc, pspace, parch = paper_placement(cfg, num_block)
        found.append(("acla_paper", spec_for(pc, pspace, parch, "acla_paper")))
        search_seconds["acla_paper"] = 0.0

    # ---- the same short retrain for every distinct architecture, Set5 x2 -------------------
    scored: dict[str, dict] = {}
    rows = []
    for method, spec in found:
        key = json.dumps([spec.space, spec.choices], sort_keys=True)
        if key not in scored:
            c = copy.deepcopy(cfg)
            c.retrain.steps = args.retrain_steps
            c.retrain.val_every = c.retrain.checkpoint_every = args.retrain_steps
            c.retrain.eval_sets = ["Set5"]
            c.retrain.milestones = [0.5, 0.75]
            t0 = time.perf_counter()
            r = retrain(spec, c, args.work / f"final_{len(scored)}", data_root=root, progress=False)
            scored[key] = {"psnr_db": r["eval"][0]["psnr"], "ssim": r["eval"][0]["ssim"],
                           "retrain_s": time.perf_counter() - t0}
            print(f"{method:>14}: {spec.cost['gflops']:.3f} GFLOPs, Set5 "
                  f"{scored[key]['psnr_db']:.3f} dB  {spec.provenance.get('method')}")
        n_att = sum(1 for k, v in spec.choices.items() if k.endswith("/op") and v != SKIP)
        rows.append({"method": method, "found_by": spec.provenance.get("method", method),
                     "attention_points": n_att, "gflops": round(spec.cost["gflops"], 4),
                     "psnr_set5_db": round(scored[key]["psnr_db"], 4),
                     "ssim_set5": round(scored[key]["ssim"], 4),
                     "choices": json.dumps(spec.choices, sort_keys=True)})
    pts = [(r["psnr_set5_db"], r["gflops"]) for r in rows]
    ref = (round(min(p[0] for p in pts) - 0.1, 3), round(max(p[1] for p in pts) * 1.05, 3))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = {}
    for m in methods:
        mp = [(r["psnr_set5_db"], r["gflops"]) for r in rows if r["method"] == m]
        front = pareto_mask(mp)
        summary[m] = {"hypervolume": hypervolume_2d(mp, ref), "front": front}
        for r, f in zip([r for r in rows if r["method"] == m], front):
            r["on_method_front"] = bool(f)
    for r in rows:
        r["hypervolume"] = round(summary[r["method"]]["hypervolume"], 5)
        r["search_seconds"] = round(search_seconds.get(r["method"], float("nan")), 1)
        r["budget_steps"] = 0 if r["method"] in ("no_attention", "acla_everywhere",
                                                  "acla_paper") else args.budget
        r["ref_point"] = f"{ref[0]} dB / {ref[1]} GFLOPs"
    for m, note in notes.items():
        rows.append({"method": m, "found_by": note})
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "found_by", "attention_points", "gflops", "psnr_set5_db", "ssim_set5",
              "on_method_front", "hypervolume", "search_seconds", "budget_steps", "ref_point",
              "choices"]
    with (args.out / "peer_comparison.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    plot(rows, methods, ref, args.out / "peer_comparison.png", args)
    for m in methods:
        print(f"{m:>16}: hypervolume {summary[m]['hypervolume']:.4f} dB*GFLOPs, search "
              f"{search_seconds.get(m, 0):.0f} s")
    print(f"-> {args.out / 'peer_comparison.csv'}")
    return 0


def plot(rows, methods, ref, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v*Ph"
    for i, m in enumerate(methods):
        mr = sorted([r for r in rows if r["method"] == m and "gflops" in r],
                    key=lambda r: r["gflops"])
        xs = [r["gflops"] for r in mr]
        ys = [r["psnr_set5_db"] for r in mr]
        ax.scatter(xs, ys, marker=markers[i % len(markers)], s=60, label=m, zorder=3)
        fx = [r["gflops"] for r in mr if r["on_method_front"]]
        fy = [r["psnr_set5_db"] for r in mr if r["on_method_front"]]
        if len(fx) > 1:
            ax.step(fx, fy, where="post", alpha=0.6)
    ax.scatter([ref[1]], [ref[0]], marker="x", color="k", label="HV reference point")
    ax.set_xlabel("GFLOPs at 1280x720 output (FLOPs = 2 x MACs)")
    ax.set_ylabel("Set5 x2 PSNR (dB, Y, crop 2)")
    ax.set_title(f"equal budget: {args.budget} search steps, {args.retrain_steps}-step retrain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
