"""``acla-nas search`` (run, join or resume a study), ``pareto`` (its trials and front) and
``export`` (the ArchSpec of a chosen trial)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path

from nas.cli.common import config_args, setup_device
from nas.errors import UsageError
from nas.tables import emit_table

log = logging.getLogger("acla_nas.study")

#: where study folders go unless ``--out`` says otherwise (git-ignored)
RUNS = Path("runs")


def _parse_ref_point(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    import math

    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--ref-point: expected PSNR_DB,GFLOPS like 30.5,2.0, got {text!r}") \
            from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UsageError(f"--ref-point: expected finite numbers, got {text!r}")
    return a, b


def search_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``search``."""
    config_args(p)
    p.add_argument("--trials", type=int, default=None,
                   help="number of searched trials of the study (default: hpo.trials)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE, journal:FILE (or a .log path), or a "
                        "database URL (default: sqlite:///<out>/study.db)")
    p.add_argument("--study", default=None, help="study name (default: the config's name)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: runs/<study>); trials run in <out>/trials/<n>")
    p.add_argument("--no-plot", action="store_true", help="do not write pareto.png")


def _command_line(args: argparse.Namespace) -> str:
    from nas.study.storage import redact

    parts = ["acla-nas", "search", "-c", str(args.config)]
    for flag, v in (("--trials", args.trials), ("--storage", args.storage),
                    ("--study", args.study), ("--out", args.out)):
        if v is not None:
            parts += [flag, redact(str(v)) if flag == "--storage" else str(v)]
    for o in args.overrides:
        parts += ["--set", o]
    return shlex.join(parts)


def run_search(args: argparse.Namespace) -> int:
    """Launch, join or resume a study; print the front and where its files are."""
    import copy

    from nas.config import dump_config, load_config
    from nas.io import atomic_write_text
    from nas.runtime import versions
    from nas.study.run import open_study, prepare_study, run_study
    from nas.study.storage import parse_storage
    from nas.study.summary import summarize_study, write_outputs

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials: must be >= 1, got {args.trials}")
    cfg = load_config(args.config, args.overrides)
    setup = prepare_study(cfg, str(args.config), trials=args.trials, study=args.study,
                          storage=args.storage)
    h = setup.hpo
    name = h.study or cfg.name
    out = args.out or RUNS / name
    device = setup_device(args.device)
    from nas.engine import distributed as dist

    if not dist.is_main():  # the other ranks of a torchrun group do rank 0's work with it
        from nas.study.group import follow

        follow(device)
        return 0
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a results folder")
    spec = parse_storage(h.storage, out)
    if h.storage is None and not (out / "study.db").exists() and (out / "trials").is_dir() \
            and any((out / "trials").iterdir()):
        raise UsageError(f"{out}: holds trials/ of an earlier study but no study.db; use another "
                         "--out or move trials/ away")
    study, storage, created = open_study(setup, spec, name, out)
    resolved = copy.deepcopy(cfg)
    resolved.hpo = {**cfg.hpo, "trials": h.trials, "study": name}
    if h.storage:
        resolved.hpo["storage"] = spec.display()
    atomic_write_text(out / "config.yaml",
                      f"# {_command_line(args)}\n# {versions()}\n" + dump_config(resolved))
    progress = not args.quiet and sys.stderr.isatty()
    log.info("study %r %s in %s; trials in %s", name, "created" if created else "joined",
             spec.display(), out / "trials")
    counts = run_study(setup, study, storage, out, device=device, progress=progress)
    summary = summarize_study(study, spec.display(), base=out, storage_obj=storage)
    paths = write_outputs(summary, out, plot=not args.no_plot)
    print(f"study {name}: {counts['done']}/{h.trials} searched trials finished "
          f"({counts['complete']} complete), {counts['ref_done']} reference trials"
          + (f"; {counts['running']} still running in other workers" if counts["running"] else "")
          + (" - the study is complete" if counts["done"] >= h.trials and not counts["running"]
             else ""))
    if len(summary.front):
        print_front(summary)
    else:
        print("no complete trial: the front is empty")
    print(f"front table: {paths['csv']} (and {paths['json']})")
    if "png" in paths:
        print(f"front plot:  {paths['png']}")
    if summary.knee is not None:
        print(f"knee:        trial {summary.knee} -> acla-nas export {out} --knee -o arch.json")
    if counts["complete"] == 0 and not counts["running"]:
        df = summary.trials
        reasons = Counter(r.split(":")[0] or "unknown" for r in
                          df.loc[(df["state"] != "COMPLETE") & (df["reference"] == ""), "fail_reason"])
        listed = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none ran"
        print(f"acla-nas search: error: no searched trial completed ({listed}); see "
              f"{paths['csv']}", file=sys.stderr)
        return 1
    return 0


def study_target_args(p: argparse.ArgumentParser) -> None:
    """STUDY, ``--storage`` and ``--study``: how ``pareto`` and ``export`` name a study."""
    p.add_argument("study_target", metavar="STUDY",
                   help="results folder (holding study.db or a journal *.log), a storage file or "
                        "URL, or the study name with --storage")
    p.add_argument("--storage", default=None, help="storage URL/file; then STUDY is the study name")
    p.add_argument("--study", dest="study_name", default=None,
                   help="study name within the storage (default: its only study)")


def pareto_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pareto``."""
    study_target_args(p)
    p.add_argument("-f", "--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="write the front plot (front highlighted, dominated trials grey, "
                        "reference architectures marked)")
    p.add_argument("--ref-point", default=None, metavar="PSNR_DB,GFLOPS",
                   help="hypervolume reference point (default: the config's hpo.ref_point, else "
                        "min PSNR - 0.1 dB, max GFLOPs x 1.1)")


def run_pareto(args: argparse.Namespace) -> int:
    """All trials and the Pareto front of a study, hypervolume, knee; optional plot."""
    from nas.study.summary import check_plot_path, open_existing, plot_summary, summarize_study

    ref = _parse_ref_point(args.ref_point)
    if args.plot is not None:
        check_plot_path(args.plot)
    study, base, shown, st = open_existing(args.study_target, args.storage, args.study_name)
    s = summarize_study(study, shown, base=base, ref_point=ref, storage_obj=st)
    if args.format == "json":
        print(json.dumps(s.to_json(), indent=2))
    elif args.format == "csv":
        emit_table(s.archs, "csv", floatfmt="%.6g")
    else:
        print("\n".join(s.header()))
        if len(s.trials):
            print("\nTrials:")
            cols = ["trial", "state", "reference", "psnr_db", "gflops", "arch_key", "front",
                    "seconds", "fail_reason", *s.param_names]
            emit_table(s.trials[cols], "table", floatfmt="%.6g")
        if len(s.front):
            print()
            print_front(s)
    if args.plot is not None:
        if not len(s.archs):
            raise UsageError(f"--plot: study {s.name} has no trial to plot")
        path = plot_summary(s, args.plot)
        print(f"plot: {path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ export
def export_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``export``."""
    study_target_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, default=None, help="trial number")
    which.add_argument("--knee", action="store_true", help="the knee of the Pareto front")
    which.add_argument("--max-gflops", type=float, default=None, metavar="G",
                       help="the front trial with the best PSNR within G GFLOPs")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the ArchSpec here (default: print it)")


def run_export(args: argparse.Namespace) -> int:
    """Write (or print) the ArchSpec of a chosen trial: by number, the knee, or a FLOPs budget."""
    from optuna.trial import TrialState

    from nas.engine.archspec import load_archspec
    from nas.study.summary import find_file, open_existing, summarize_study

    study, base, shown, st = open_existing(args.study_target, args.storage, args.study_name)
    s = summarize_study(study, shown, base=base, storage_obj=st)
    df = s.trials
    if args.trial is not None:
        number = args.trial
        hit = df[df["trial"] == number]
        if not len(hit):
            raise UsageError(f"--trial {number}: study {s.name} has trials 0..{len(df) - 1}")
        if hit.iloc[0]["state"] != "COMPLETE":
            raise UsageError(f"--trial {number}: the trial is {hit.iloc[0]['state']}, not COMPLETE")
    elif args.knee:
        if s.knee is None:
            raise UsageError(f"--knee: study {s.name} has no complete trial")
        number = s.knee
    else:
        g = args.max_gflops
        front = s.front_frame
        ok = front[front["gflops"] <= g]
        if not len(ok):
            cheapest = f"{front['gflops'].min():.4g}" if len(front) else "n/a"
            raise UsageError(f"--max-gflops {g:g}: no front trial within {g:g} GFLOPs "
                             f"(cheapest: {cheapest})")
        best = ok.sort_values(["psnr_db", "gflops"], ascending=[False, True]).iloc[0]
        number = int(str(best["trials"]).split(",")[0])
    trial = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.number == number)
    path = find_file(trial.user_attrs.get("arch_path"), base)
    if path is None:
        raise UsageError(f"trial {number}: ArchSpec {trial.user_attrs.get('arch_path')!r} not found "
                         "(run on another machine? copy its run directory)")
    arch = load_archspec(path)
    arch.provenance = {**arch.provenance, "study": s.name, "trial": number}
    psnr, gflops = trial.values
    if args.output is not None:
        arch.save(args.output)
        print(f"trial {number}: {psnr:.3f} dB, {gflops:.4g} GFLOPs -> {args.output}",
              file=sys.stderr)
    else:
        print(json.dumps(arch.to_dict(), indent=2))
    return 0


def print_front(s) -> None:
    """The front as a table: each architecture's mean PSNR +- standard error over its scoring
    seeds, its paired difference to the plain backbone, ties, references, the knee."""
    import math

    front = s.front_frame
    print(f"Pareto front ({len(front)} architectures; {s.axis_labels.get('psnr_db', 'PSNR dB')} "
          f"vs {s.axis_labels.get('gflops', 'GFLOPs')}; +- = standard error over scoring seeds):")
    for r in front.itertuples():
        pm = "" if math.isnan(r.psnr_se) else f" +- {r.psnr_se:.3f}"
        delta = "" if math.isnan(r.delta_db) else (
            f"  vs plain {r.delta_db:+.3f}" + ("" if math.isnan(r.delta_se) else f" +- {r.delta_se:.3f}"))
        who = f"reference {r.references}" if r.references else f"trial {str(r.trials).split(',')[0]}"
        flags = ("  TIE (within noise of the cheaper point)" if r.tie else "") + \
            ("  <- knee" if r.knee else "")
        print(f"  {r.gflops:10.4f} GFLOPs  {r.psnr_db:8.3f} dB{pm}  ({r.n_seeds} seeds){delta}  "
              f"{who}{flags}")
    if s.ref_point is not None:
        print(f"hypervolume {s.hypervolume:.6g} dB x GFLOPs against reference point "
              f"({s.ref_point[0]:g} dB, {s.ref_point[1]:g} GFLOPs)")
    if s.within_noise:
        print("WARNING: the front is within noise: no front point beats the next cheaper one by "
              "more than 2 standard errors (more scoring seeds or longer scoring runs would be "
              "needed to separate them)")
    if s.near_front:
        print(f"WARNING: {len(s.near_front)} architecture(s) off the front score within noise "
              "of a front point that dominates them (<= 2 standard errors): they are dominated "
              "in the means, not beyond noise")
