"""Search quality against ground truth: an enumerable sub-space trained stand-alone, then every
search method at equal compute over several search seeds.

Stages (each resumable; results in ``results/bench/search_quality*.csv``):

``ground-truth``
    Every architecture of the space of ``--config`` (default ``search_quality.yaml``: colour
    denoising at sigma 50, edsr-tiny, points b01-b03, keys {0, 4, 9}: 27 architectures) scored
    by the study's scoring protocol (:func:`nas.engine.scoring.score_architecture`: stand-alone
    training from scratch, PSNR on held-out photos, common random numbers) with seeds ``0 .. --gt-seeds - 1``.
    ``--workers N`` processes share the list (one thread each). Rows:
    ``arch_key, seed, psnr_db, seconds, gflops, params, arch``.

``methods``
    For ``--search-seeds`` seeds (the supernet's initialisation and data order, ``cfg.seed``):

    * ``ours``: an ``acla-nas search`` study (the real objective: shared alpha-independent
      supernet, alpha with a budget penalty at sampled targets, budget derivation, TPE over the
      targets) whose scoring cache is pre-filled with the ground truth of seed 0 - the same
      protocol, so a derived architecture's score is the number the study would have computed;
    * ``random``: architectures drawn uniformly without replacement, as many as ours scored plus
      the scoring runs its supernet and alpha phases cost (equal compute, measured in seconds);
    * ``nni-darts``, ``nni-gumbel``: NNI's one-shot strategies through the adapter
      (``nas.adapters.nni``; NNI 3.0 is archived upstream since 2024-09), one run per FLOPs
      weight ``lambda`` in ``--nni-lambdas`` (our differentiable E[F] added), equal budget of
      optimiser steps per run;
    * ``paper``: the ACLA paper's fixed choice (ACLA with 9 keys at every point).

    Rows: ``method, seed, arch_key, own_psnr_db, gflops, seconds``. For ``ours`` also the
    trained supernet's ranking: every architecture's PSNR with inherited weights on the batches
    the study's rerank uses -> ``search_quality_supernet_rank.csv``
    (``seed, arch_key, inherited_psnr_db``).

``supernet-rank``
    That ranking for ``ours`` runs whose folders are in ``--work`` but have no rows yet.

``report``
    From the two tables: whether the ground truth separates its architectures at all (a two-way
    analysis of variance, architecture x seed; the range of the means is no such test), the true
    front and its noise. Methods pick by seed 0's scores, so the truth they are valued at is the
    mean of the other seeds (all seeds when fewer than two others exist). Per method and seed
    the hypervolume ratio to the true front (the method's front as it saw it, valued at the
    ground truth), regret at every FLOPs budget (ground-truth PSNR of the method's pick within the
    budget vs the best there), P(beats random); for ours also Kendall tau between the supernet's
    ranking and the ground truth, beside the same tau for seed 0's stand-alone scores. Writes
    ``search_quality.csv`` (per method, mean +- SE over seeds) and ``search_quality.png``.

Usage::

    python experiments/bench/search_quality.py ground-truth --workers 2
    python experiments/bench/search_quality.py methods
    python experiments/bench/search_quality.py supernet-rank   # older runs' supernets only
    python experiments/bench/search_quality.py report
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing as mp
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.config import load_config  # noqa: E402
from nas.engine.flops import CostModel  # noqa: E402
from nas.engine.network import build_fixed, canonical_arch  # noqa: E402
from nas.engine.scoring import arch_key, score_architecture  # noqa: E402
from nas.study.objective import study_space  # noqa: E402

GT_COLUMNS = ["arch_key", "seed", "psnr_db", "seconds", "gflops", "params", "arch"]
METHOD_COLUMNS = ["method", "seed", "arch_key", "own_psnr_db", "gflops", "seconds"]


def all_archs(space) -> list[dict]:
    """Every distinct architecture of an enumerable space (canonical, deduplicated)."""
    choices = space.choices()
    seen, out = set(), []
    for values in itertools.product(*[c.values for c in choices]):
        arch = canonical_arch(space, dict(zip([c.label for c in choices], values)))
        k = arch_key(arch)
        if k not in seen:
            seen.add(k)
            out.append(arch)
    return out


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by this script (empty if missing)."""
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def append_row(path: Path, columns: list[str], row: dict) -> None:
    """Append one row (header first if the file is new); one line per write, so a killed run
    loses at most the run in flight."""
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerow(row)


# ------------------------------------------------------------------------------ ground truth
def _gt_worker(args) -> None:
    config, out, jobs, worker = args
    torch.set_num_threads(1)
    cfg = load_config(config)
    space = study_space(cfg)
    cost = CostModel(space, cfg.task, tuple(cfg.search.lr_size) if cfg.search.lr_size else None)
    for arch, seed in jobs:
        s = score_architecture(cfg, space, arch, seed)
        net = build_fixed(space, cfg.task, arch)
        append_row(out, GT_COLUMNS, {
            "arch_key": arch_key(arch), "seed": seed, "psnr_db": f"{s.psnr_db:.6f}",
            "seconds": f"{s.seconds:.1f}", "gflops": f"{cost.exact(arch) / 1e9:.6f}",
            "params": sum(p.numel() for p in net.parameters()), "arch": json.dumps(arch)})
        print(f"[worker {worker}] {arch_key(arch)} seed {seed}: {s.psnr_db:.4f} dB "
              f"({s.seconds:.0f} s)", flush=True)


def ground_truth(args) -> None:
    """Score every architecture with every ground-truth seed (missing rows only)."""
    cfg = load_config(args.config)
    space = study_space(cfg)
    out = args.out / "search_quality_ground_truth.csv"
    done = {(r["arch_key"], int(r["seed"])) for r in read_rows(out)}
    archs = all_archs(space)
    jobs = [(a, s) for s in range(args.gt_seeds) for a in archs if (arch_key(a), s) not in done]
    print(f"{len(archs)} architectures x {args.gt_seeds} seeds: {len(jobs)} runs to do", flush=True)
    if not jobs:
        return
    parts = [jobs[i::args.workers] for i in range(args.workers)]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_gt_worker, args=((args.config, out, part, i),))
             for i, part in enumerate(parts) if part]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["ground-truth", "methods", "supernet-rank", "report"])
    p.add_argument("--config", type=Path, default=ROOT / "experiments/bench/search_quality.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench")
    p.add_argument("--work", type=Path, default=Path("/tmp/acla-nas-search-quality"),
                   help="run folders of the searches (not committed)")
    p.add_argument("--gt-seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--search-seeds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+",
                   help="methods: only these search seeds (e.g. two processes on disjoint seeds)")
    methods = ["ours", "random", "paper", "nni-darts", "nni-gumbel"]
    p.add_argument("--methods", nargs="+", choices=methods, default=methods,
                   help="methods: only these (random needs ours of the same seed first)")
    p.add_argument("--cost-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="methods: ground-truth seeds whose run times give the cost of one "
                        "scoring run (random search's budget); seeds 3 and 4 of the committed "
                        "table ran beside other jobs")
    p.add_argument("--nni-lambdas", type=float, nargs="+", default=[0.0, 2.0])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "ground-truth":
        ground_truth(args)
    elif args.stage == "methods":
        from search_quality_methods import run_methods  # noqa: E402 - beside this file

        run_methods(args)
    elif args.stage == "supernet-rank":
        from search_quality_methods import rank_missing  # noqa: E402

        rank_missing(args)
    else:
        from search_quality_methods import report  # noqa: E402

        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
