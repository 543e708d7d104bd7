"""Planted problem: a synthetic task whose best architecture is known, to test that the search
machinery finds it (issue #13, part 5) - independent of whether attention helps on photos.

Task ("coded long-range copy", SR x2 on synthetic images written as PNG files, LR and HR pairs
read through ``data.lr_source``):

* LR input, per pixel: R ~ U[0, 1] (i.i.d. texture), G = a binary code c ~ Bernoulli(1/2)
  (0 or 1), B ~ U[0, 1] (distractor). Where ``x + d`` leaves the image the code is 0.
* Target (LR grid, then nearest-neighbour x2 to HR): G and B copied, and
  ``R_out(x, y) = R(x + d, y)`` where ``c = 1``, ``R(x, y)`` where ``c = 0``, with
  ``d = --dilation`` (12) pixels.

Why the planted architecture wins (bookkeeping, checked by the ``validate`` stage):

* ``d`` exceeds the receptive field of the edsr-tiny backbone (head 1 + 4 blocks x 2 + body conv
  1 + the x2 tail's 1.5 LR pixels = 11.5 < 12), so no conv network of the space reads
  ``R(x + d)``: it can only copy ``R(x)`` where ``c = 0`` and guess the mean where ``c = 1``.
* ACLA with ``dilation: d`` starts its key slots ``d`` pixels apart (centre, then ``(+d, 0)``,
  ``(0, +d)``, ``(-d, 0)``, ... see ``slot_grid``): 2 keys are exactly the centre and ``(+d, 0)``,
  so a 2-key ACLA only has to learn to put its softmax weight on one of its two slots from the
  code (a 1x1 function of the query) - no offset has to travel.
* 4 keys solve it as well but cost more FLOPs; the budget (``--budget``, default the FLOPs of the
  plain backbone plus one 2-key ACLA) admits one 2-key ACLA and nothing more. So the feasible
  architectures are the plain backbone and one 2-key ACLA at b00, b01, b02 or b03.
* Placement: the backbone is residual and translation-equivariant, so one 2-key ACLA computes the
  same function at any point as long as layers can still carry its output to the tail; but it is
  *learned* reliably only early in the network (measured: at b00 and b01 on every seed, at b02
  and b03 on some). The planted set is therefore "one 2-key ACLA, skip elsewhere" at the points
  where ``validate`` measures that it solves the task on every seed - not one unique placement.

Stages (resumable; ``--work`` holds the images, supernets and runs; tables go to ``--out``):

``validate``
    Every feasible architecture (and the 4-key ones, for the record) trained stand-alone by the
    scoring protocol (:func:`nas.engine.scoring.score_architecture`, common random numbers) with
    seeds ``0 .. --val-seeds - 1`` -> ``planted_validation.csv``
    (``arch, seed, psnr_db, gflops, feasible, seconds``). The planted set is every feasible
    attention architecture that solves the task on every seed (:func:`planted_set`: worst seed
    at least halfway, in dB, from the plain backbone to the best architecture).

``search``
    For ``--seeds`` search seeds (supernet initialisation and data order): one supernet search
    (``SupernetSearch``: alpha-independent weight paths, largest-path warm-up, alpha with the
    budget penalty at target ``--budget``, budget-constrained derivation) -> its derived
    architecture; and random search at equal compute: feasible architectures drawn uniformly
    without replacement, as many stand-alone scoring runs as the search's wall time pays for
    (at least 1), the best by its own score picked. -> ``planted_runs.csv``
    (``method, seed, arch, gflops, recovered, one_2key, seconds, n_scored``; ``one_2key``: one
    2-key ACLA at any point, skip elsewhere).

``rank``
    The supernet's own ranking, per search seed: the inherited-weight PSNR of every feasible
    architecture in that search's trained supernet -> ``planted_supernet_rank.csv``
    (``seed, arch, inherited_psnr_db, picked``), and how often its first choice is planted.

``report``
    Recovery counts -> ``planted.csv`` (``method, seeds, recovered, rate, one_2key``) and a
    printed summary.

Usage::

    python experiments/bench/planted.py            # all stages, 3 validation seeds, 10 searches
    python experiments/bench/planted.py validate --val-seeds 3
    python experiments/bench/planted.py search --seeds 10
    python experiments/bench/planted.py rank
    python experiments/bench/planted.py report
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search_quality import append_row, read_rows  # noqa: E402  (resumable CSV rows, one per run)

import nas  # noqa: E402,F401  (registers the operators before search_spaces is used)
from nas.config import config_from_dict  # noqa: E402
from nas.engine.flops import CostModel  # noqa: E402
from nas.engine.network import canonical_arch  # noqa: E402
from nas.engine.scoring import load_splits, score_architecture  # noqa: E402
from nas.io import atomic_write_text  # noqa: E402
from nas.study.objective import study_space  # noqa: E402

VAL_COLUMNS = ["arch", "seed", "psnr_db", "gflops", "feasible", "seconds"]
RUN_COLUMNS = ["method", "seed", "arch", "gflops", "recovered", "one_2key", "seconds", "n_scored"]
#: the planted architectures' worst seed must clear the plain backbone's best seed by more than
#: this (dB), see :func:`planted_set`
MARGIN_DB = 1.0


# ----------------------------------------------------------------------------------- data
def planted_pair(rng: np.random.Generator, size: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """One (LR, HR) pair of the planted task (module docstring), uint8.

    Args:
        rng: numpy generator.
        size: LR side (pixels); the HR side is ``2 * size``.
        d: the copy distance (pixels, > 0).

    Returns:
        ``lr`` ``(size, size, 3)`` and ``hr`` ``(2 size, 2 size, 3)``, uint8.
    """
    r = rng.integers(0, 256, (size, size), dtype=np.int64)
    c = rng.integers(0, 2, (size, size), dtype=np.int64)
    c[:, size - d:] = 0  # no partner inside the image: the code says "copy your own pixel"
    b = rng.integers(0, 256, (size, size), dtype=np.int64)
    shifted = np.zeros_like(r)
    shifted[:, :size - d] = r[:, d:]
    out_r = np.where(c == 1, shifted, r)
    lr = np.stack([r, c * 255, b], -1).astype(np.uint8)
    target = np.stack([out_r, c * 255, b], -1).astype(np.uint8)
    hr = target.repeat(2, axis=0).repeat(2, axis=1)
    return lr, hr


def write_images(folder: Path, n: int, size: int, d: int, seed: int = 0) -> Path:
    """Write ``n`` planted pairs as ``folder/hr/pNNN.png`` and ``folder/lr/pNNNx2.png`` (the
    DIV2K layout ``data.lr_source`` reads); skipped when the folder is already complete.

    Returns:
        ``folder``.
    """
    from PIL import Image

    stamp = folder / "planted.json"
    meta = {"n": n, "size": size, "d": d, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return folder
    (folder / "hr").mkdir(parents=True, exist_ok=True)
    (folder / "lr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        lr, hr = planted_pair(rng, size, d)
        Image.fromarray(hr).save(folder / "hr" / f"p{i:03d}.png")
        Image.fromarray(lr).save(folder / "lr" / f"p{i:03d}x2.png")
    atomic_write_text(stamp, json.dumps(meta))
    return folder


# --------------------------------------------------------------------------------- config
def planted_config(args, seed: int = 0):
    """The run config of the planted problem (one search; ``seed`` = supernet seed)."""
    images = args.work / "images"
    d = {
        "name": "planted", "seed": seed,
        "task": {"name": "sr", "scale": 2},
        "data": {"source": str(images / "hr"), "lr_source": str(images / "lr"),
                 "val_fraction": 0.2, "score_fraction": 0.2, "patch_size": args.patch_size,
                 "batch_size": 8, "storage": "subimages", "augment": False},
        "space": {"backbone": {"preset": "edsr-tiny"}, "points": ["b00", "b01", "b02", "b03"],
                  "ops": ["skip", "acla"], "max_refs": 1, "keys": [0, 2, 4],
                  "op_config": {"acla": {"dilation": args.dilation}}},
        "search": {"supernet_steps": args.supernet_steps,
                   "largest_path_steps": args.supernet_steps // 4, "lr": 2.0e-3,
                   "alpha_steps": args.alpha_steps, "alpha_batch_size": 16, "alpha_lr": args.alpha_lr,
                   "tau": {"start": 5.0, "end": 0.5, "kind": "exponential"},
                   "penalty": {"kind": "budget", "lambda": 2.0, "target_gflops": 1.0},
                   "checkpoint_every": 10 ** 6, "log_every": 50},
        "score": {"steps": args.score_steps, "lr": args.score_lr, "batch_size": 8,
                  "patch_size": args.patch_size, "seeds": 1, "noise_seeds": 1,
                  "max_eval_side": 2 * args.image_size},
    }
    cfg = config_from_dict(d)
    cost = cost_model(cfg)
    space = study_space(cfg)
    cfg.search.penalty.target_gflops = budget_flops(space, cost) / 1e9
    return cfg


def cost_model(cfg) -> CostModel:
    lr_size = tuple(cfg.search.lr_size) if cfg.search.lr_size else None
    return CostModel(study_space(cfg), cfg.task, lr_size)


def arch_of(space, placement: dict[str, int]) -> dict:
    """The canonical architecture with ACLA of ``k`` keys at each ``{point: k}``, skip elsewhere."""
    arch = {}
    for p in space:
        k = placement.get(p.name, 0)
        arch[p.op_label()] = "acla" if k else "skip"
        if k:
            arch.update({p.key_label(r): k for r in p.refs})
    return canonical_arch(space, space.validate(arch))


def label(space, arch: dict) -> str:
    """``plain`` or ``b01k2`` / ``b01k2+b03k4``: the compact name of an architecture."""
    parts = []
    for p in space:
        if arch.get(p.op_label()) == "acla":
            parts.append(f"{p.name}k{arch[p.key_label(p.refs[0])]}")
    return "+".join(parts) or "plain"


def is_one_2key(name: str) -> bool:
    """Whether a :func:`label` is one 2-key ACLA and skip elsewhere (at any point)."""
    return "+" not in name and name.endswith("k2")


def budget_flops(space, cost: CostModel) -> int:
    """FLOPs of the plain backbone plus one 2-key ACLA (at the first point)."""
    return cost.exact(arch_of(space, {next(iter(space)).name: 2}))


def candidates(space, cost: CostModel) -> tuple[list[dict], list[dict]]:
    """(feasible, extra): the architectures within the budget, and the single 4-key ones."""
    budget = budget_flops(space, cost)
    names = [p.name for p in space]
    every = [arch_of(space, {})] + [arch_of(space, {n: k}) for k in (2, 4) for n in names]
    feasible = [a for a in every if cost.exact(a) <= budget]
    return feasible, [a for a in every if cost.exact(a) > budget]


def planted_set(rows: list[dict]) -> tuple[set[str], dict[str, list[float]]]:
    """The planted architectures and every architecture's scores (``{arch: [psnr per seed]}``).

    Planted: the feasible attention architectures that solve the task on *every* validation seed,
    i.e. whose worst seed reaches the midpoint (in dB) between the plain backbone's mean and the
    best feasible architecture's mean - provided that midpoint is more than :data:`MARGIN_DB`
    above every seed of the plain backbone (otherwise nothing is planted: the task is not
    learnable at this budget of steps).
    """
    scores: dict[str, list[float]] = {}
    feasible = set()
    for r in rows:
        scores.setdefault(r["arch"], []).append(float(r["psnr_db"]))
        if r["feasible"] == "1":
            feasible.add(r["arch"])
    if "plain" not in scores or len(feasible) < 2:
        return set(), scores
    best = max(statistics.fmean(scores[a]) for a in feasible)
    mid = (statistics.fmean(scores["plain"]) + best) / 2
    if mid <= max(scores["plain"]) + MARGIN_DB:
        return set(), scores
    return {a for a in feasible - {"plain"} if min(scores[a]) >= mid}, scores


# ------------------------------------------------------------------------------- stages
def validate(args) -> None:
    cfg = planted_config(args)
    space, cost = study_space(cfg), cost_model(cfg)
    splits = load_splits(cfg)
    feasible, extra = candidates(space, cost)
    if args.feasible_only:
        extra = []
    if args.archs:
        known = {label(space, a) for a in feasible + extra}
        if set(args.archs) - known:
            raise SystemExit(f"--archs: unknown {sorted(set(args.archs) - known)}; "
                             f"known: {sorted(known)}")
        feasible = [a for a in feasible if label(space, a) in args.archs]
        extra = [a for a in extra if label(space, a) in args.archs]
    path = args.out / "planted_validation.csv"
    done = {(r["arch"], int(r["seed"])) for r in read_rows(path)}
    for seed in range(args.val_seeds):
        for arch in feasible + extra:
            name = label(space, arch)
            if (name, seed) in done:
                continue
            s = score_architecture(cfg, space, arch, seed, splits=splits)
            append_row(path, VAL_COLUMNS, {
                "arch": name, "seed": seed, "psnr_db": f"{s.psnr_db:.3f}",
                "gflops": f"{cost.exact(arch) / 1e9:.5f}", "feasible": int(arch in feasible),
                "seconds": f"{s.seconds:.1f}"})
            print(f"validate {name} seed {seed}: {s.psnr_db:.2f} dB ({s.seconds:.0f} s)", flush=True)


def search(args) -> None:
    from nas.engine.supernet_search import SupernetSearch

    planted, scores = planted_set(read_rows(args.out / "planted_validation.csv"))
    if not planted:
        raise SystemExit("no planted architecture: run (or fix) the validate stage first")
    base = planted_config(args)
    space, cost = study_space(base), cost_model(base)
    feasible, _ = candidates(space, cost)
    val_seconds = statistics.fmean(float(r["seconds"])
                                   for r in read_rows(args.out / "planted_validation.csv"))
    path = args.out / "planted_runs.csv"
    done = {(r["method"], int(r["seed"])) for r in read_rows(path)}
    splits = load_splits(base)
    ours = f"ours-rerank{args.rerank}" if args.rerank else "ours"
    for seed in range(args.seeds):
        seconds = None
        if "ours" in args.methods and (ours, seed) not in done:
            cfg = copy.deepcopy(base)
            cfg.seed = seed
            cfg.search.rerank = args.rerank
            t0 = time.perf_counter()
            # one supernet per seed, shared by the variants of our search
            res = SupernetSearch(cfg, args.work / "runs" / f"{ours}_s{seed}", progress=False,
                                 supernet_dir=args.work / "runs" / f"ours_s{seed}" / "supernet").run()
            seconds = time.perf_counter() - t0
            name = label(space, res.arch)
            append_row(path, RUN_COLUMNS, {
                "method": ours, "seed": seed, "arch": name, "gflops": f"{res.gflops:.5f}",
                "recovered": int(name in planted), "one_2key": int(is_one_2key(name)),
                "seconds": f"{seconds:.1f}", "n_scored": 0})
            print(f"{ours} seed {seed}: {name} ({'recovered' if name in planted else 'missed'}, "
                  f"{seconds:.0f} s)", flush=True)
        if "random" in args.methods and ("random", seed) not in done:
            if seconds is None:
                seconds = float(next(r["seconds"] for r in read_rows(path)
                                     if r["method"] == ours and int(r["seed"]) == seed))
            n = max(1, min(len(feasible), round(seconds / val_seconds)))
            rng = random.Random(1000 + seed)
            drawn = rng.sample(feasible, n)
            # each draw is scored by its own stand-alone run (scoring seed 100 + search seed,
            # apart from the validation seeds)
            best, best_psnr = None, -math.inf
            for arch in drawn:
                s = score_architecture(base, space, arch, 100 + seed, splits=splits)
                if s.psnr_db > best_psnr:
                    best, best_psnr = arch, s.psnr_db
            name = label(space, best)
            append_row(path, RUN_COLUMNS, {
                "method": "random", "seed": seed, "arch": name,
                "gflops": f"{cost.exact(best) / 1e9:.5f}", "recovered": int(name in planted),
                "one_2key": int(is_one_2key(name)),
                "seconds": f"{n * val_seconds:.1f}", "n_scored": n})
            print(f"random seed {seed}: {name} from {n} draws", flush=True)


def rank(args) -> None:
    """The supernet's own ranking of the feasible architectures, per search seed: inherited-weight
    PSNR (mean over 8 fixed batches of 16 patches of the alpha split) of each search's trained
    supernet -> ``planted_supernet_rank.csv`` (``seed, arch, inherited_psnr_db, picked``)."""
    from nas.engine.rerank import inherited_psnr
    from nas.engine.supernet import Supernet
    from nas.restoration.patches import PatchStream
    from nas.timing import write_csv

    base = planted_config(args)
    space, cost = study_space(base), cost_model(base)
    feasible, _ = candidates(space, cost)
    splits = load_splits(base)
    stream = PatchStream(splits.val, base.task, args.patch_size, 16, seed=12345,
                         augment=base.data.augment)
    batches = [stream.next() for _ in range(8)]
    picked = {int(r["seed"]): r["arch"] for r in read_rows(args.out / "planted_runs.csv")
              if r["method"] == "ours"}
    rows = []
    for seed in sorted(picked):
        weights = args.work / "runs" / f"ours_s{seed}" / "supernet" / "supernet.pt"
        if not weights.is_file():
            raise SystemExit(f"{weights}: missing (the search stage keeps it under --work)")
        sn = Supernet(base.space, base.task)
        sn.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False)["model"])
        for arch, v in zip(feasible, inherited_psnr(sn, feasible, batches)):
            name = label(space, arch)
            rows.append({"seed": seed, "arch": name, "inherited_psnr_db": f"{v:.3f}",
                         "picked": int(name == picked[seed])})
    write_csv(args.out / "planted_supernet_rank.csv",
              ["seed", "arch", "inherited_psnr_db", "picked"], rows)
    planted, _ = planted_set(read_rows(args.out / "planted_validation.csv"))
    top_ok = 0
    for seed in sorted(picked):
        mine = [r for r in rows if r["seed"] == seed and r["arch"] != "plain"]
        top = max(mine, key=lambda r: float(r["inherited_psnr_db"]))["arch"]
        top_ok += top in planted
        print(f"seed {seed}: gates picked {picked[seed]}, supernet ranks first {top}")
    print(f"the supernet's own first choice is in the planted set on {top_ok}/{len(picked)} seeds")


def report(args) -> None:
    planted, scores = planted_set(read_rows(args.out / "planted_validation.csv"))
    rows = read_rows(args.out / "planted_runs.csv")
    lines = ["method,seeds,recovered,rate,one_2key"]
    print("validation (PSNR dB, mean +- SD over seeds):")
    for a, v in sorted(scores.items(), key=lambda kv: -statistics.fmean(kv[1])):
        sd = statistics.stdev(v) if len(v) > 1 else math.nan
        print(f"  {a:8s} {statistics.fmean(v):7.2f} +- {sd:.2f}  ({len(v)} seeds)"
              f"{'  planted' if a in planted else ''}")
    for method in dict.fromkeys(r["method"] for r in rows):
        got = [r for r in rows if r["method"] == method]
        if not got:
            continue
        k = sum(int(r["recovered"]) for r in got)
        one = sum(int(r["one_2key"]) for r in got)
        lines.append(f"{method},{len(got)},{k},{k / len(got):.2f},{one}")
        picks = ", ".join(r["arch"] for r in got)
        print(f"{method}: recovered {k}/{len(got)}, one 2-key ACLA anywhere {one}/{len(got)} "
              f"({picks}); planted set: {', '.join(sorted(planted))}")
    atomic_write_text(args.out / "planted.csv", "\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", nargs="?", default="all",
                    choices=["all", "validate", "search", "rank", "report"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "planted")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    ap.add_argument("--dilation", type=int, default=12, help="copy distance d (LR pixels)")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=96, help="LR side of each image")
    ap.add_argument("--patch-size", type=int, default=64, help="HR training patch side")
    ap.add_argument("--score-steps", type=int, default=400)
    ap.add_argument("--supernet-steps", type=int, default=1500)
    ap.add_argument("--alpha-steps", type=int, default=300)
    ap.add_argument("--alpha-lr", type=float, default=0.2)
    ap.add_argument("--val-seeds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--methods", nargs="+", choices=["ours", "random"], default=["ours", "random"])
    ap.add_argument("--rerank", type=int, default=0,
                    help="search.rerank of our search (method 'ours-rerankK'; 0: 'ours')")
    ap.add_argument("--archs", nargs="+", help="validate only these (e.g. plain b00k2)")
    ap.add_argument("--score-lr", type=float, default=2.0e-3)
    ap.add_argument("--feasible-only", action="store_true",
                    help="validate only the architectures within the budget (not the 4-key ones)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ACLA_NAS_CACHE", str(args.work / "cache"))
    write_images(args.work / "images", args.images, args.image_size, args.dilation)
    if args.stage in ("all", "validate"):
        validate(args)
    if args.stage in ("all", "search"):
        search(args)
    if args.stage in ("all", "rank"):
        rank(args)
    if args.stage in ("all", "report"):
        report(args)


if __name__ == "__main__":
    main()
