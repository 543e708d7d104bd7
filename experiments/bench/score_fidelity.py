"""Rank fidelity of cheaper scoring protocols against the search-quality ground truth.

Issue #13 asks that the scoring protocol be chosen "by measured rank fidelity". The ground truth
of ``search_quality.py`` (every architecture of the quickstart's space trained from scratch with
several seeds) says how well one from-scratch run ranks the architectures (Kendall tau of seed
0's scores against the mean of the other seeds). This script measures the alternative the issue
names: start from the weights a trained supernet gives each architecture
(:meth:`nas.engine.supernet.Supernet.fixed_network` with ``inherit=True``), fine-tune it with the
scoring protocol's optimiser, learning-rate schedule and patch stream for ``--steps`` steps, and
score it on the same held-out photos (:func:`nas.restoration.evaluate.psnr_on_centre_crops`).
Step 0 is the inherited network as it is. One cosine schedule runs over the longest ``--steps``;
shorter lengths are read at that point of it (mid-schedule, not a schedule of their own).

Inputs: the supernets of ``search_quality.py methods`` (``--work``, one per search seed
``ours_s<seed>``) and ``results/bench/search_quality_ground_truth.csv``. Output:
``results/bench/score_fidelity.csv`` (``supernet_seed, arch_key, steps, psnr_db, seconds``;
resumable) and, with ``report``, the Kendall tau of each protocol against the held-out truth,
beside one from-scratch run's.

Usage::

    python experiments/bench/score_fidelity.py run --supernet-seeds 0 1 2 --steps 0 100 300
    python experiments/bench/score_fidelity.py report
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

COLUMNS = ["supernet_seed", "arch_key", "steps", "psnr_db", "seconds"]


def _worker(job) -> None:
    from search_quality import append_row, read_rows
    from search_quality_methods import ground_truth_table, load_ours_supernet

    from nas.config import load_config
    from nas.engine.objective import l1_train_step
    from nas.engine.scoring import load_splits
    from nas.restoration.evaluate import psnr_on_centre_crops
    from nas.restoration.patches import PatchStream

    args, seed = job
    torch.set_num_threads(1)
    c, sn = load_ours_supernet(args.work, load_config(args.config), seed)
    gt = ground_truth_table(args.gt)
    out = args.out / "score_fidelity.csv"
    done = {(int(r["supernet_seed"]), r["arch_key"]) for r in read_rows(out)}
    splits = load_splits(c)
    sc = c.score
    marks = sorted(set(args.steps))
    for key in sorted(gt):
        if (seed, key) in done:
            continue
        t0 = time.perf_counter()
        torch.manual_seed(1)  # the scoring protocol's seed-0 streams (common random numbers)
        net = sn.fixed_network(gt[key]["arch"], inherit=True).train()
        stream = PatchStream(splits.train, c.task, sc.patch_size, sc.batch_size, seed=2,
                             augment=c.data.augment)
        opt = torch.optim.Adam(net.parameters(), lr=sc.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(marks) or 1,
                                                           eta_min=sc.lr * 0.1)
        rows = []
        for step in range(max(marks) + 1):
            if step in marks:
                psnr = psnr_on_centre_crops(net, splits.score, c.task, sc.max_eval_side,
                                            lambda t: t)
                net.train()
                rows.append({"supernet_seed": seed, "arch_key": key, "steps": step,
                             "psnr_db": f"{psnr:.6f}",
                             "seconds": f"{time.perf_counter() - t0:.1f}"})
            if step < max(marks):
                lq, hr = stream.next()
                l1_train_step(net, opt, lq, hr, amp=False, grad_clip=1.0,
                              what=f"fine-tune step {step}")
                sched.step()
        for r in rows:  # one architecture's rows together: a killed run redoes it whole
            append_row(out, COLUMNS, r)
        print(f"supernet {seed} {key}: " + ", ".join(f"{r['steps']} steps {float(r['psnr_db']):.4f}"
                                                     for r in rows), flush=True)


def run(args) -> None:
    jobs = [(args, s) for s in args.supernet_seeds]
    if args.workers <= 1:
        for j in jobs:
            _worker(j)
        return
    with mp.get_context("fork").Pool(args.workers) as pool:
        pool.map(_worker, jobs, chunksize=1)


def report(args) -> None:
    """Kendall tau (mean +- SE over supernets) of each fine-tune length against the truth."""
    from scipy.stats import kendalltau
    from search_quality import read_rows
    from search_quality_methods import ground_truth_table, held_out_truth, one_run_kendall

    from nas.engine.scoring import mean_and_se

    gt = ground_truth_table(args.gt)
    keys = sorted(gt)
    held, means = held_out_truth(gt)
    truth = [means[k] for k in keys]
    table: dict[tuple[int, int], dict[str, float]] = {}
    secs: dict[int, list[float]] = {}
    for r in read_rows(args.out / "score_fidelity.csv"):
        table.setdefault((int(r["steps"]), int(r["supernet_seed"])), {})[r["arch_key"]] = \
            float(r["psnr_db"])
        secs.setdefault(int(r["steps"]), []).append(float(r["seconds"]))
    scratch = kendalltau([gt[k]["scores"][0] for k in keys], truth).statistic
    loo_m, loo_se = mean_and_se(one_run_kendall(gt, keys))
    print(f"truth: mean of ground-truth seeds {held}; one from-scratch run: seed 0 tau "
          f"{scratch:.3f}; each seed against the others {loo_m:.3f} +- {loo_se:.3f}; "
          f"{statistics.fmean(g['seconds'][0] for g in gt.values()):.0f} s per architecture")
    for steps in sorted({s for s, _ in table}):
        taus = [kendalltau([v[k] for k in keys], truth).statistic
                for (s, _), v in table.items() if s == steps and set(v) == set(keys)]
        if taus:
            m, se = mean_and_se(taus)
            print(f"inherited + {steps} fine-tune steps: tau {m:.3f} +- {se:.3f} over "
                  f"{len(taus)} supernets, {statistics.fmean(secs[steps]):.0f} s per architecture")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["run", "report"])
    p.add_argument("--config", type=Path, default=HERE / "search_quality.yaml")
    p.add_argument("--gt", type=Path, default=ROOT / "results/bench",
                   help="folder of search_quality_ground_truth.csv")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench")
    p.add_argument("--work", type=Path, default=Path("/tmp/acla-nas-search-quality"),
                   help="run folders of search_quality.py methods (ours_s<seed>/supernets)")
    p.add_argument("--supernet-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 100, 300])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (run if args.stage == "run" else report)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
