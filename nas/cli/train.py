"""``acla-nas supernet`` (one supernet search) and ``acla-nas retrain`` (train a fixed network)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from nas.cli.common import claim_run_dir, config_args, setup_device

#: where run folders go unless ``--out`` says otherwise (git-ignored)
RUNS = Path("runs")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def supernet_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``supernet``."""
    config_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/<name>/supernet); resumed if it holds this "
                        "run's checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start over in a folder that holds another run (its files are removed)")
    p.add_argument("--no-score", action="store_true",
                   help="do not score the derived architecture (stand-alone training runs)")


def run_supernet(args: argparse.Namespace) -> int:
    """One supernet search: derive, score and export its argmax architecture."""
    from nas.config import load_config
    from nas.engine import distributed as dist
    from nas.engine.supernet_search import SupernetSearch

    cfg = load_config(args.config, args.overrides)
    device = setup_device(args.device)
    out = args.out or RUNS / cfg.name / "supernet"
    if dist.is_main():
        claim_run_dir(out, "supernet", {"config_sha": _digest(cfg.to_dict())}, args.force)
    dist.barrier()
    progress = not args.quiet and sys.stderr.isatty()
    res = SupernetSearch(cfg, out, device=device, progress=progress).run()
    say = print if dist.is_main() else (lambda *a, **k: None)
    say(f"derived architecture: {res.arch_path} ({res.gflops:.4f} GFLOPs, "
          f"{res.params / 1e6:.3f} M params; search {res.seconds:.0f} s)")
    if not args.no_score:
        import math

        from nas.engine.export import record_scores
        from nas.engine.network import build_backbone
        from nas.engine.scoring import ScoreCache
        from nas.restoration.evaluate import Convention
        from search_spaces.space import SearchSpace

        space = SearchSpace(cfg.space, build_backbone(cfg.space, cfg.task).config.num_block)
        scores = ScoreCache().scores(cfg, space, res.arch, range(cfg.score.seeds), device=device)
        conv = Convention.for_task(cfg.task).describe()
        if not dist.is_main():
            return 0
        res = record_scores(res, out, scores, conv)
        pm = "" if math.isnan(res.psnr_se) else f" +- {res.psnr_se:.3f} (SE)"
        print(f"score: {res.psnr_db:.3f} dB{pm} over {len(scores)} seed(s): trained stand-alone "
              f"for {cfg.score.steps} steps, held-out score images; {conv}")
    say(f"log: {out / 'log.jsonl'}")
    return 0


def retrain_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``retrain``."""
    p.add_argument("arch", type=Path, help="ArchSpec JSON")
    config_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/<name>/retrain); resumed if it holds this run")
    p.add_argument("--force", action="store_true",
                   help="start over in a folder that holds another run (its files are removed)")
    p.add_argument("--data-root", default=None,
                   help="benchmark data for validation/evaluation (default: $ACLA_NAS_DATA; "
                        "without it, validation uses held-out crops and no benchmark is run)")
    p.add_argument("--inherit", type=Path, default=None,
                   help="initialise from a supernet checkpoint (supernet.pt)")


def run_retrain(args: argparse.Namespace) -> int:
    """Train an exported architecture, validate it, evaluate it on benchmark sets."""
    from nas.config import load_config
    from nas.engine.archspec import load_archspec
    from nas.engine.retrain import retrain
    from nas.errors import UsageError
    from nas.restoration.images import resolve_data_root

    spec = load_archspec(args.arch)
    cfg = load_config(args.config, args.overrides)
    device = setup_device(args.device)
    root = None
    if args.data_root or os.environ.get("ACLA_NAS_DATA"):
        root = resolve_data_root(args.data_root)
    if args.inherit is not None and not args.inherit.is_file():
        raise UsageError(f"--inherit: {args.inherit}: no such supernet checkpoint")
    out = args.out or RUNS / cfg.name / "retrain"
    claim_run_dir(out, "retrain", {"config_sha": _digest(cfg.to_dict()),
                                   "arch_sha": _digest(spec.choices),
                                   "inherit": str(args.inherit) if args.inherit else None},
                  args.force)
    res = retrain(spec, cfg, out, data_root=root, device=device,
                  progress=not args.quiet and sys.stderr.isatty(), inherit=args.inherit)
    print(f"best validation PSNR {res['best_val_psnr_db']:.2f} dB after {res['steps']} steps "
          f"({res['seconds']:.0f} s); weights: {out / 'model_best.pt'}")
    for row in res.get("eval", []):
        print(f"{row['set']:>9}: {row['psnr']:.2f} dB / {row['ssim']:.4f} "
              f"({row['images']} images)")
    return 0
