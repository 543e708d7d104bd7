"""``acla-nas eval`` (PSNR/SSIM on benchmark sets) and ``acla-nas flops`` (FLOPs of an ArchSpec)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nas.cli.common import parse_scale, resolve_device
from nas.errors import UsageError


def eval_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``eval``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bicubic", action="store_true",
                     help="score the no-model baseline (MATLAB bicubic for SR; the degraded input "
                          "for denoising/demosaicing/JPEG)")
    src.add_argument("--arch", type=Path, help="ArchSpec JSON of the network to evaluate")
    p.add_argument("--weights", type=Path, help="checkpoint with the network weights (with --arch)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate the EMA weights of the checkpoint (params_ema)")
    p.add_argument("--sets", default="Set5,Set14,B100", help="comma-separated benchmark sets")
    p.add_argument("--task", default=None, choices=["sr", "denoise", "demosaic", "jpeg"],
                   help="task (default: the ArchSpec's, else sr)")
    p.add_argument("--scale", type=parse_scale, default=None, help="SR scale 2, 3 or 4")
    p.add_argument("--sigma", type=float, default=None,
                   help="AWGN sigma on [0, 255] (denoise; default: the ArchSpec's, else 25)")
    p.add_argument("--quality", type=int, default=None,
                   help="JPEG quality (jpeg; default: the ArchSpec's, else 10)")
    p.add_argument("--data-root", default=None, help="data folder (default: $ACLA_NAS_DATA)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of degraded inputs (default: $ACLA_NAS_CACHE or ~/.cache/acla-nas)")
    p.add_argument("--no-cache", action="store_true", help="do not cache degraded inputs")
    p.add_argument("--per-image", type=Path, default=None, help="write the per-image CSV here")
    p.add_argument("-f", "--format", default="table", choices=["table", "csv", "json"])


def run_eval(args: argparse.Namespace) -> int:
    """PSNR/SSIM of a network or of the no-model baseline, per set, in the task's convention."""
    from nas.restoration.data import default_cache_dir
    from nas.restoration.evaluate import Convention, evaluate_sets, model_restore_fn, per_set_means
    from nas.restoration.images import resolve_data_root
    from nas.restoration.task import Task
    from nas.tables import emit_table

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets:
        raise UsageError("--sets: no set given")
    root = resolve_data_root(args.data_root)
    restore = None
    base = {"name": "sr", "scale": 2}
    if args.arch is not None:
        from nas.engine.archspec import load_archspec, load_weights

        spec = load_archspec(args.arch)
        base = dict(spec.task)
        if args.weights is None:
            raise UsageError("--weights: required with --arch")
        model = load_weights(spec, args.weights, key="params_ema" if args.ema else None)
        restore = model_restore_fn(model, resolve_device(args.device))
    elif args.weights is not None or args.ema:
        raise UsageError("--weights/--ema: only with --arch")
    given = {k: v for k, v in (("name", args.task), ("scale", args.scale), ("sigma", args.sigma),
                               ("quality", args.quality)) if v is not None}
    if "name" in given and given["name"] != base.get("name"):
        base = {"name": given["name"]}
    task = Task.from_dict({**base, **given}, "--task")
    if args.arch is not None and task.to_dict() != spec.task_obj().to_dict():
        raise UsageError(f"--task/--scale/--sigma/--quality: {task.to_dict()} differs from the "
                         f"ArchSpec's {spec.task} ({args.arch})")
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    per_image = evaluate_sets(root, sets, task, restore, cache_dir=cache,
                              progress=not args.quiet and sys.stderr.isatty())
    if args.per_image:
        emit_table(per_image, "csv", args.per_image)
    table = per_set_means(per_image)
    conv = Convention.for_task(task)
    what = "bicubic baseline" if restore is None else f"{args.arch}"
    if args.format == "table":
        print(f"# {what} | {task.describe()} | {conv.describe()} | PSNR in dB")
    emit_table(table, args.format)
    return 0


def flops_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``flops``."""
    p.add_argument("arch", type=Path, help="ArchSpec JSON")
    p.add_argument("--lr-size", default=None, metavar="HxW",
                   help="input size (default: the ArchSpec's, i.e. a 1280x720 output)")
    p.add_argument("-f", "--format", default="table", choices=["table", "json"])


def run_flops(args: argparse.Namespace) -> int:
    """Analytic and measured FLOPs (= 2 x MACs) and parameters of an ArchSpec; exit 1 when they
    disagree."""
    from nas.engine.archspec import build_model, load_archspec
    from nas.engine.flops import CostModel, default_lr_size, measure_network_flops

    spec = load_archspec(args.arch)
    task = spec.task_obj()
    if args.lr_size:
        try:
            h, w = (int(v) for v in args.lr_size.lower().split("x"))
            if h <= 0 or w <= 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"--lr-size: expected HxW like 180x320, got {args.lr_size!r}") \
                from None
    else:
        h, w = spec.cost.get("lr_size") or default_lr_size(task)
    model = build_model(spec)
    analytic = CostModel(spec.search_space(), task, (h, w)).exact(spec.choices)
    measured = measure_network_flops(model, (h, w))
    params = sum(p.numel() for p in model.parameters())
    row = {"arch": str(args.arch), "lr_size": [h, w], "analytic_flops": analytic,
           "measured_flops": measured, "gflops": analytic / 1e9, "params": params,
           "convention": "FLOPs = 2 x MACs, per image; FlopCounterMode + grid_sample/softmax/"
                         "SDPA formulas"}
    if args.format == "json":
        print(json.dumps(row, indent=2))
    else:
        print(f"# {args.arch}: input {w}x{h} (W x H), FLOPs = 2 x MACs")
        print(f"analytic  {analytic / 1e9:12.4f} GFLOPs")
        print(f"measured  {measured / 1e9:12.4f} GFLOPs (FlopCounterMode)")
        print(f"params    {params / 1e6:12.4f} M")
    return 0 if analytic == measured else 1
