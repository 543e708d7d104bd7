"""The ``acla-nas`` command line (also ``python -m nas``).

A static command table (:data:`COMMANDS`): one ``add_arguments`` and one ``run`` function per
command, in the modules beside this one. Shared flags: ``-v/-q``, ``--debug``, ``--device``.
Exit codes: 0 success, 1 a run that produced nothing (e.g. no trial of a study completed) or a
FLOPs mismatch, 2 usage or input error (one line naming the file or field; the traceback only
with ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Callable, NamedTuple

from nas.cli import evaluate, study, train
from nas.cli.common import device_arg, resolve_device
from nas.errors import DivergedError, UsageError

log = logging.getLogger("acla_nas")


class Command(NamedTuple):
    """One subcommand: its arguments, what it runs, and its one-line help."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


#: the subcommands, in the order ``--help`` lists them
COMMANDS: dict[str, Command] = {
    "search": Command(study.search_args, study.run_search,
                      "launch, join or resume an Optuna study (PSNR vs GFLOPs) of supernet searches"),
    "pareto": Command(study.pareto_args, study.run_pareto,
                      "all trials and the Pareto front of a study, hypervolume, plot"),
    "export": Command(study.export_args, study.run_export,
                      "the ArchSpec (arch.json) of a chosen trial of a study"),
    "supernet": Command(train.supernet_args, train.run_supernet,
                        "run one supernet search (no outer loop) and export its argmax architecture"),
    "retrain": Command(train.retrain_args, train.run_retrain,
                       "train an exported architecture from scratch and evaluate it"),
    "eval": Command(evaluate.eval_args, evaluate.run_eval,
                    "PSNR/SSIM of a network or the bicubic baseline on benchmark sets"),
    "flops": Command(evaluate.flops_args, evaluate.run_flops,
                     "analytic and measured FLOPs and parameters of an ArchSpec"),
}

#: exceptions reported as one line with exit code 2 (a traceback only with ``--debug``)
USER_ERRORS = (UsageError, DivergedError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``acla-nas`` parser with every command of :data:`COMMANDS`."""
    from nas import __version__

    shared = _Parser(add_help=False)
    shared.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    shared.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    shared.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    shared.add_argument("--device", default="auto", type=device_arg,
                        help="auto (CUDA when available), cpu, cuda or cuda:K")
    parser = _Parser(
        prog="acla-nas",
        description="Search where attention goes in a restoration network, and how many keys "
                    "it reads (ACLA, RELA, LCoA; accuracy + FLOPs; Optuna Pareto fronts).",
    )
    parser.add_argument("--version", action="version", version=f"acla-nas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, parents=[shared], help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)
    finished = False
    try:
        code = int(COMMANDS[args.command].run(args) or 0)
        finished = True
        return code
    except KeyboardInterrupt:
        print("acla-nas: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if isinstance(e, DivergedError):
            msg = f"training diverged ({msg}); lower the learning rate or enable gradient clipping"
        elif isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"acla-nas {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            # a rank whose command finished waits for the others before the group is torn down:
            # a gloo rank that exits while rank 0 still works (the noise-floor scoring is rank 0's
            # alone) was seen to abort at exit ("terminate called without an active exception"),
            # and torchrun then stopped rank 0 mid-run
            if finished:
                tdist.barrier()
            tdist.destroy_process_group()


def _terminate(signum, frame) -> None:
    """SIGTERM (e.g. from a cluster scheduler or torchrun) ends a run like Ctrl-C: the running
    trial records why and is re-queued; checkpoints already written stay."""
    raise KeyboardInterrupt


__all__ = ["COMMANDS", "Command", "build_parser", "main", "resolve_device"]
