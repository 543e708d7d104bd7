"""The ``acla-nas`` command line (also ``python -m nas``).

One small function per command, a name -> command table, shared flags (``-v/-q``, ``--debug``,
``--device``). Exit codes: 0 success, 2 usage or input error (one line naming the file or
field; the traceback only with ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from nas.errors import UsageError

log = logging.getLogger("acla_nas")

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = {}


def command(name: str, help: str):
    """Register ``add_arguments`` + ``run`` functions of a subcommand."""

    def deco(add_arguments):
        def bind(run):
            COMMANDS[name] = (add_arguments, run, help)
            return run

        return bind

    return deco


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)


def parse_scale(value: str) -> int:
    try:
        s = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {value!r}") from None
    if s not in (2, 3, 4):
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {s}")
    return s


def emit_table(df, fmt: str, out: Path | None = None, floatfmt: str = "%.4f") -> None:
    """Print a DataFrame as an aligned table, CSV or JSON (records)."""
    if fmt == "csv":
        text = df.to_csv(index=False, float_format=floatfmt)
    elif fmt == "json":
        text = df.to_json(orient="records", indent=2, double_precision=6) + "\n"
    else:
        text = df.to_string(index=False, float_format=lambda v: floatfmt % v) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        from nas.io import atomic_write_text

        atomic_write_text(out, text)


# ------------------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bicubic", action="store_true",
                     help="score the no-model baseline (MATLAB bicubic for SR; the degraded input "
                          "for denoising/demosaicing/JPEG)")
    src.add_argument("--arch", type=Path, help="ArchSpec JSON of the network to evaluate")
    p.add_argument("--weights", type=Path, help="checkpoint with the network weights (with --arch)")
    p.add_argument("--sets", default="Set5,Set14,B100", help="comma-separated benchmark sets")
    p.add_argument("--task", default=None, choices=["sr", "denoise", "demosaic", "jpeg"],
                   help="task (default: the ArchSpec's, else sr)")
    p.add_argument("--scale", type=parse_scale, default=None, help="SR scale 2, 3 or 4")
    p.add_argument("--sigma", type=float, default=25.0, help="AWGN sigma on [0, 255] (denoise)")
    p.add_argument("--quality", type=int, default=10, help="JPEG quality (jpeg)")
    p.add_argument("--data-root", default=None, help="data folder (default: $ACLA_NAS_DATA)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of degraded inputs (default: $ACLA_NAS_CACHE or ~/.cache/acla-nas)")
    p.add_argument("--no-cache", action="store_true", help="do not cache degraded inputs")
    p.add_argument("--per-image", type=Path, default=None, help="write the per-image CSV here")
    p.add_argument("-f", "--format", default="table", choices=["table", "csv", "json"])


@command("eval", "PSNR/SSIM of a network or the bicubic baseline on benchmark sets")(_eval_args)
def run_eval(args: argparse.Namespace) -> int:
    from nas.data import Task, default_cache_dir, resolve_data_root
    from nas.evaluate import Convention, evaluate_sets, model_restore_fn, summarize

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets:
        raise UsageError("--sets: no set given")
    root = resolve_data_root(args.data_root)
    restore = None
    task_dict = None
    if args.arch is not None:
        from nas.archspec import load_archspec, load_weights

        spec = load_archspec(args.arch)
        task_dict = dict(spec.task)
        if args.weights is None:
            raise UsageError("--weights: required with --arch")
        model = load_weights(spec, args.weights)
        restore = model_restore_fn(model, resolve_device(args.device))
    name = args.task or (task_dict or {}).get("name", "sr")
    scale = args.scale or (task_dict or {}).get("scale", 2)
    task = Task(name=name, scale=scale if name == "sr" else 1, sigma=args.sigma,
                quality=args.quality)
    if task_dict is not None and task.to_dict() != Task.from_dict(task_dict).to_dict():
        raise UsageError(f"--task/--scale: {task.to_dict()} differs from the ArchSpec's "
                         f"{task_dict} ({args.arch})")
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    per_image = evaluate_sets(root, sets, task, restore, cache_dir=cache,
                              progress=not args.quiet and sys.stderr.isatty())
    if args.per_image:
        emit_table(per_image, "csv", args.per_image)
    table = summarize(per_image)
    conv = Convention.for_task(task)
    what = "bicubic baseline" if restore is None else f"{args.arch}"
    if args.format == "table":
        print(f"# {what} | {task.describe()} | {conv.describe()} | PSNR in dB")
    emit_table(table, args.format)
    return 0


# -------------------------------------------------------------------------------- supernet
def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", type=Path, required=required, help="YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.steps=100 (repeatable)")


def _supernet_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default: results/<name>/supernet); resumed if it holds "
                        "a checkpoint")


@command("supernet", "run one supernet search (no outer loop) and export its argmax "
                     "architecture")(_supernet_args)
def run_supernet(args: argparse.Namespace) -> int:
    from nas.config import load_config
    from nas.search import SearchRun

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("results") / cfg.name / "supernet"
    run = SearchRun(cfg, out, device=resolve_device(args.device),
                    progress=not args.quiet and sys.stderr.isatty())
    res = run.run()
    print(f"derived architecture: {res.arch_path}")
    print(f"validation PSNR {res.psnr_db:.2f} dB (inherited weights), {res.gflops:.3f} GFLOPs at "
          f"{run.model.cost.lr_size[1]}x{run.model.cost.lr_size[0]} input, "
          f"{res.params / 1e6:.3f} M params, {res.seconds:.0f} s")
    print(f"log: {out / 'log.jsonl'}")
    return 0


# ----------------------------------------------------------------------------------- flops
def _flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", type=Path, help="ArchSpec JSON")
    p.add_argument("--lr-size", default=None, metavar="HxW",
                   help="input size (default: the ArchSpec's, i.e. a 1280x720 output)")
    p.add_argument("-f", "--format", default="table", choices=["table", "json"])


@command("flops", "analytic and measured FLOPs and parameters of an ArchSpec")(_flops_args)
def run_flops(args: argparse.Namespace) -> int:
    import copy

    import torch

    from nas.archspec import build_model, load_archspec
    from nas.cost import CostModel, default_lr_size
    from nas.flops import measure_flops

    spec = load_archspec(args.arch)
    task = spec.task_obj()
    if args.lr_size:
        try:
            h, w = (int(v) for v in args.lr_size.lower().split("x"))
            assert h > 0 and w > 0
        except (ValueError, AssertionError):
            raise UsageError(f"--lr-size: expected HxW like 180x320, got {args.lr_size!r}") \
                from None
    else:
        h, w = spec.cost.get("lr_size") or default_lr_size(task)
    model = build_model(spec)
    analytic = CostModel(spec.search_space(), task, (h, w)).exact(spec.choices)
    measured = measure_flops(copy.deepcopy(model).to("meta"),
                             torch.empty(1, 3, h, w, device="meta"))
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


# --------------------------------------------------------------------------------- retrain
def _retrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", type=Path, help="ArchSpec JSON")
    _config_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default: results/<name>/retrain); resumed if present")
    p.add_argument("--data-root", default=None,
                   help="benchmark data for validation/evaluation (default: $ACLA_NAS_DATA; "
                        "without it, validation uses held-out crops and no benchmark is run)")
    p.add_argument("--inherit", type=Path, default=None,
                   help="initialise from a supernet checkpoint (supernet.pt)")


@command("retrain", "train an exported architecture from scratch and evaluate it")(_retrain_args)
def run_retrain(args: argparse.Namespace) -> int:
    import os

    from nas.archspec import load_archspec
    from nas.config import load_config
    from nas.data import resolve_data_root
    from nas.retrain import retrain

    spec = load_archspec(args.arch)
    cfg = load_config(args.config, args.overrides)
    root = None
    if args.data_root or os.environ.get("ACLA_NAS_DATA"):
        root = resolve_data_root(args.data_root)
    out = args.out or Path("results") / cfg.name / "retrain"
    res = retrain(spec, cfg, out, data_root=root, device=resolve_device(args.device),
                  progress=not args.quiet and sys.stderr.isatty(), inherit=args.inherit)
    print(f"best validation PSNR {res['best_val_psnr_db']:.2f} dB after {res['steps']} steps "
          f"({res['seconds']:.0f} s); weights: {out / 'model_best.pt'}")
    for row in res.get("eval", []):
        print(f"{row['set']:>9}: {row['psnr']:.2f} dB / {row['ssim']:.4f} "
              f"({row['images']} images)")
    return 0


# ------------------------------------------------------------------------------------- main
#: modules that register further commands with :func:`command` (imported when the parser is built)
COMMAND_MODULES = ("nas.study_cli",)


def _load_command_modules() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from nas import __version__

    _load_command_modules()

    shared = _Parser(add_help=False)
    shared.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    shared.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    shared.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    shared.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser = _Parser(
        prog="acla-nas",
        description="Search where attention goes in a restoration network, and how many keys "
                    "it reads (ACLA, RELA, LCoA; accuracy + FLOPs; Optuna Pareto fronts).",
    )
    parser.add_argument("--version", action="version", version=f"acla-nas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for name, (add_args, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, parents=[shared], help=help_, description=help_)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    _, run, _ = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("acla-nas: interrupted", file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError, PermissionError, IsADirectoryError,
            json.JSONDecodeError) as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        print(f"acla-nas {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
