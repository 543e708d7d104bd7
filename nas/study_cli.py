"""The study commands: ``acla-nas search``, ``acla-nas pareto``, ``acla-nas export``.

``search`` runs (or joins, or resumes) an Optuna study (:mod:`nas.hpo`) and writes the front;
``pareto`` lists the trials and the front of a study, with the hypervolume against a stated
reference point and an optional plot; ``export`` writes the ArchSpec of a chosen trial.

A study is named on the command line by its results folder (``results/quickstart``, holding
``study.db`` or a journal ``*.log``), a storage file, a storage URL, or - with ``--storage`` - by
its study name. Optuna's own CLI and optuna-dashboard read the same storages, e.g.
``optuna trials --storage sqlite:///results/quickstart/study.db --study-name quickstart``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.cli import _config_args, command, emit_table, resolve_device
from nas.errors import UsageError

log = logging.getLogger("acla_nas.study")

# ------------------------------------------------------------------------------ opening studies


def _storage_from_target(target: str) -> tuple[str, Path | None]:
    """``(storage spec, study folder)`` of a STUDY argument (folder, file or URL)."""
    if "://" in target or target.startswith("journal:"):
        base = None
        if target.startswith("sqlite:///"):
            base = Path(target[len("sqlite:///"):]).parent
        elif target.startswith("journal:"):
            base = Path(target[len("journal:"):]).parent
        return target, base
    p = Path(target)
    if not p.exists() and (Path("results") / target).is_dir():
        p = Path("results") / target
    if p.is_dir():
        if (p / "study.db").is_file():
            return f"sqlite:///{p / 'study.db'}", p
        logs = sorted(p.glob("*.log"))
        if len(logs) == 1:
            return f"journal:{logs[0]}", p
        if logs:
            raise UsageError(f"{p}: several journal files ({', '.join(x.name for x in logs)}); "
                             "name one")
        raise UsageError(f"{p}: no study.db or journal *.log in this folder")
    if p.is_file():
        if p.suffix == ".log":
            return f"journal:{p}", p.parent
        return f"sqlite:///{p}", p.parent
    raise UsageError(f"{target}: no such results folder, study file or storage URL")


def open_existing(target: str, storage: str | None = None, name: str | None = None):
    """Load a study for reading.

    Args:
        target: results folder, ``study.db``/journal file, storage URL, or (with ``storage``)
            the study name.
        storage: storage spec; then ``target`` is the study name.
        name: study name within the storage (default: its only study).

    Returns:
        ``(study, study folder or None, storage spec)``.

    Raises:
        UsageError: missing file or folder, unreachable storage, unknown or ambiguous study.
    """
    import optuna

    from nas import hpo

    if storage is not None:
        spec, base = storage, None
        name = name or target
        if hpo.storage_kind(spec) == "sqlite" and spec.startswith("sqlite:///"):
            base = Path(spec[len("sqlite:///"):]).parent
    else:
        spec, base = _storage_from_target(target)
    st = hpo.resolve_storage(spec, create=False)
    names = optuna.get_all_study_names(st)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise UsageError(f"{hpo.redact(spec)}: the storage holds no study")
        else:
            raise UsageError(f"{hpo.redact(spec)}: several studies ({', '.join(names)}); "
                             "choose one with --study")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{hpo.redact(spec)}: no study {name!r}{hint}; studies: "
                         f"{', '.join(names) or '(none)'}")
    with hpo._quiet_optuna():
        study = optuna.load_study(study_name=name, storage=st)
    return study, base, spec


def _find(path: str | None, base: Path | None) -> Path | None:
    """A recorded file path, else the same file under the study folder's ``trials/<n>/``."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    if base is not None:
        for cand in (base / p, base / "trials" / p.parent.name / p.name):
            if cand.is_file():
                return cand
    return None


# ---------------------------------------------------------------------------------- summaries
@dataclass
class StudySummary:
    """All trials of a study as a table, its front, hypervolume and knee."""

    name: str
    storage: str
    trials: Any  # pandas.DataFrame, one row per trial
    front: list[int]  # trial numbers, by GFLOPs
    knee: int | None
    ref_point: tuple[float, float] | None
    ref_point_source: str
    hypervolume: float
    conventions: dict = field(default_factory=dict)
    axis_labels: dict = field(default_factory=dict)
    param_names: list = field(default_factory=list)

    @property
    def front_frame(self):
        df = self.trials
        return df[df["front"]].sort_values("gflops").reset_index(drop=True)

    def header(self) -> list[str]:
        df = self.trials
        n_ref = int((df["reference"] != "").sum()) if len(df) else 0
        complete = int(((df["state"] == "COMPLETE") & (df["reference"] == "")).sum()) if len(df) \
            else 0
        lines = [f"# study {self.name} ({self.storage}): {complete} searched trials complete, "
                 f"{n_ref} reference trials, {len(self.front)} on the front"]
        for k, v in self.conventions.items():
            lines.append(f"# {k}: {v}")
        if self.ref_point is not None:
            lines.append(f"# hypervolume {self.hypervolume:.6g} dB x GFLOPs against reference point "
                         f"({self.ref_point[0]:g} dB, {self.ref_point[1]:g} GFLOPs) "
                         f"[{self.ref_point_source}]")
        if self.knee is not None:
            lines.append(f"# knee: trial {self.knee}")
        return lines

    def to_json(self) -> dict:
        def rows(df):
            return json.loads(df.to_json(orient="records", double_precision=10))

        return {"study": self.name, "storage": self.storage, "directions": ["maximize", "minimize"],
                "metric_names": ["psnr_db", "gflops"], "conventions": self.conventions,
                "reference_point": list(self.ref_point) if self.ref_point else None,
                "reference_point_source": self.ref_point_source,
                "hypervolume": self.hypervolume, "hypervolume_unit": "dB x GFLOPs",
                "knee_trial": self.knee, "front": rows(self.front_frame),
                "trials": rows(self.trials)}


def summarize(study, storage: str, base: Path | None = None,
              ref_point: tuple[float, float] | None = None) -> StudySummary:
    """Tabulate a study: one row per trial, the front (Optuna's ``study.best_trials`` among
    searched trials), hypervolume against the reference point, and the knee.

    Args:
        study: an Optuna study with directions (maximize PSNR, minimize GFLOPs).
        storage: storage description for the header.
        base: study folder, to find ArchSpec files recorded with other working directories.
        ref_point: ``(psnr_db, gflops)``; default: the study's ``ref_point`` user attr, else
            :func:`nas.pareto.default_reference_point` over all complete trials.
    """
    import pandas as pd

    from nas import hpo, pareto

    with hpo._quiet_optuna():
        trials = study.get_trials(deepcopy=False)
        best = {t.number for t in study.best_trials if "reference" not in t.user_attrs}
    params: list[str] = []
    for t in trials:
        for p in t.params:
            if p not in params:
                params.append(p)
    rows = []
    for t in trials:
        ua = t.user_attrs
        vals = t.values if t.values is not None and len(t.values) == 2 else [math.nan, math.nan]
        arch = _find(ua.get("arch_path"), base)
        row = {"trial": t.number, "state": t.state.name, "reference": ua.get("reference", ""),
               "psnr_db": float(vals[0]), "gflops": float(vals[1]),
               "params_m": ua["params"] / 1e6 if "params" in ua else math.nan,
               "front": t.number in best, "knee": False,
               "seconds": round(hpo.trial_seconds(t), 1),
               "retry_of": ua.get("retry_of", ""), "duplicate_of": ua.get("duplicate_of", ""),
               "fail_reason": ua.get("fail_reason", "")}
        for p in params:
            row[p] = t.params.get(p)
        row["arch"] = str(arch) if arch else ua.get("arch_path", "")
        rows.append(row)
    cols = ["trial", "state", "reference", "psnr_db", "gflops", "params_m", "front", "knee",
            "seconds", "retry_of", "duplicate_of", "fail_reason", *params, "arch"]
    df = pd.DataFrame(rows, columns=cols)
    complete = df[df["state"] == "COMPLETE"]
    front_df = df[df["front"]].sort_values("gflops")
    front = [int(n) for n in front_df["trial"]]
    source = "given"
    if ref_point is None and study.user_attrs.get("ref_point"):
        ref_point = tuple(float(v) for v in study.user_attrs["ref_point"])
        source = "hpo.ref_point of the config"
    if ref_point is None and len(complete):
        ref_point = pareto.default_reference_point(
            list(zip(complete["psnr_db"], complete["gflops"])))
        source = "default: min PSNR - 0.1 dB, max GFLOPs x 1.1 over all complete trials"
    pts = list(zip(front_df["psnr_db"], front_df["gflops"]))
    hv = pareto.hypervolume_2d(pts, ref_point) if (pts and ref_point) else 0.0
    knee = None
    if pts:
        knee = front[pareto.knee_index(pts)]
        df.loc[df["trial"] == knee, "knee"] = True
    return StudySummary(name=study.study_name, storage=storage, trials=df, front=front, knee=knee,
                        ref_point=ref_point, ref_point_source=source, hypervolume=hv,
                        conventions=dict(study.user_attrs.get("conventions") or {}),
                        axis_labels=dict(study.user_attrs.get("axis_labels") or {}),
                        param_names=params)


def plot_summary(s: StudySummary, path: Path) -> Path:
    """Render :class:`StudySummary` with :func:`nas.pareto.plot_front`."""
    from nas import pareto

    df = s.trials
    searched = df[(df["state"] == "COMPLETE") & (df["reference"] == "")].reset_index(drop=True)
    refs = df[(df["state"] == "COMPLETE") & (df["reference"] != "")]
    points = list(zip(searched["psnr_db"], searched["gflops"]))
    knee = None
    if s.knee is not None:
        hit = searched.index[searched["trial"] == s.knee]
        knee = int(hit[0]) if len(hit) else None
    labels = s.axis_labels
    title = (f"{s.name}: {len(points)} trials, front {len(s.front)}, hypervolume "
             f"{s.hypervolume:.4g} dB x GFLOPs")
    return pareto.plot_front(
        path, points, list(searched["front"]), labels=[f"#{n}" for n in searched["trial"]],
        references=[(r.reference, r.psnr_db, r.gflops) for r in refs.itertuples()],
        reference_point=s.ref_point, knee=knee, title=title,
        xlabel=labels.get("gflops", "GFLOPs (FLOPs = 2 x MACs)"),
        ylabel=labels.get("psnr_db", "PSNR (dB)"))


def write_outputs(s: StudySummary, out: Path, plot: bool = True) -> dict[str, Path]:
    """Write ``pareto.csv`` (all trials, ``front`` column), ``pareto.json`` and ``pareto.png``."""
    from nas.io import atomic_write_json

    paths = {"csv": out / "pareto.csv", "json": out / "pareto.json"}
    emit_table(s.trials, "csv", paths["csv"], floatfmt="%.6g")
    atomic_write_json(paths["json"], s.to_json())
    if plot and len(s.trials):
        paths["png"] = plot_summary(s, out / "pareto.png")
    return paths


def _parse_ref_point(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--ref-point: expected PSNR_DB,GFLOPS like 30.5,2.0, got {text!r}") \
            from None
    return a, b


# ------------------------------------------------------------------------------------ search
def _search_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--trials", type=int, default=None,
                   help="number of searched trials of the study (default: hpo.trials)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE, journal:FILE (or a .log path), or a "
                        "database URL (default: sqlite:///<out>/study.db)")
    p.add_argument("--study", default=None, help="study name (default: the config's name)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: results/<study>); trials run in <out>/trials/<n>")
    p.add_argument("--no-plot", action="store_true", help="do not write pareto.png")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["acla-nas", "search", "-c", str(args.config)]
    for flag, v in (("--trials", args.trials), ("--storage", args.storage),
                    ("--study", args.study), ("--out", args.out)):
        if v is not None:
            if flag == "--storage":
                from nas.hpo import redact

                v = redact(str(v))
            parts += [flag, str(v)]
    for o in args.overrides:
        parts += ["--set", o]
    return shlex.join(parts)


def _versions() -> str:
    import platform

    import optuna
    import torch

    from nas import __version__
    from nas.search import git_commit

    return (f"acla-nas {__version__}, torch {torch.__version__}, optuna {optuna.__version__}, "
            f"python {platform.python_version()}, git {git_commit()}")


@command("search", "launch, join or resume an Optuna study (PSNR vs GFLOPs) of supernet searches")(
    _search_args)
def run_search(args: argparse.Namespace) -> int:
    import copy

    from nas import hpo
    from nas.config import dump_config, load_config
    from nas.io import atomic_write_text

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials: must be >= 1, got {args.trials}")
    cfg = load_config(args.config, args.overrides)
    setup = hpo.prepare(cfg, str(args.config), trials=args.trials, study=args.study,
                        storage=args.storage)
    h = setup.hpo
    name = h.study or cfg.name
    out = args.out or Path("results") / name
    device = resolve_device(args.device)
    if h.storage is None and not (out / "study.db").exists() and (out / "trials").is_dir() \
            and any((out / "trials").iterdir()):
        raise UsageError(f"{out}: holds trials/ of an earlier study but no study.db; use another "
                         "--out or move trials/ away")
    storage = hpo.resolve_storage(h.storage, out, heartbeat_interval=h.heartbeat_interval,
                                  grace_period=h.grace_period, max_retry=h.max_retry)
    study, created = hpo.open_study(setup, storage, name)
    storage_text = hpo.redact(h.storage) if h.storage else hpo.default_storage_url(out)
    resolved = copy.deepcopy(cfg)
    resolved.hpo = {**cfg.hpo, "trials": h.trials, "study": name}
    if h.storage:
        resolved.hpo["storage"] = storage_text
    atomic_write_text(out / "config.yaml",
                      f"# {_command_line(args)}\n# {_versions()}\n" + dump_config(resolved))
    progress = not args.quiet and sys.stderr.isatty()
    log.info("study %r %s in %s; trials in %s", name, "created" if created else "joined",
             storage_text, out / "trials")
    counts = hpo.run_study(setup, study, out, device=device, progress=progress)
    summary = summarize(study, storage_text, base=out)
    paths = write_outputs(summary, out, plot=not args.no_plot)
    print(f"study {name}: {counts['done']}/{h.trials} searched trials finished "
          f"({counts['complete']} complete), {counts['ref_done']} reference trials"
          + (f"; {counts['running']} still running in other workers" if counts["running"] else ""))
    front = summary.front_frame
    if len(front):
        cols = ["trial", "psnr_db", "gflops", "params_m", "knee"]
        print(f"Pareto front ({len(front)} trials; {summary.axis_labels.get('psnr_db', 'PSNR dB')} "
              f"vs {summary.axis_labels.get('gflops', 'GFLOPs')}):")
        emit_table(front[cols], "table", floatfmt="%.6g")
        print(f"hypervolume {summary.hypervolume:.6g} dB x GFLOPs against reference point "
              f"({summary.ref_point[0]:g} dB, {summary.ref_point[1]:g} GFLOPs)")
    else:
        print("no complete searched trial yet: the front is empty")
    print(f"front table: {paths['csv']} (and {paths['json']})")
    if "png" in paths:
        print(f"front plot:  {paths['png']}")
    if summary.knee is not None:
        print(f"knee:        trial {summary.knee} -> acla-nas export {out} --knee -o arch.json")
    return 0


# ------------------------------------------------------------------------------------ pareto
def _study_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_target", metavar="STUDY",
                   help="results folder (holding study.db or a journal *.log), a storage file or "
                        "URL, or the study name with --storage")
    p.add_argument("--storage", default=None, help="storage URL/file; then STUDY is the study name")
    p.add_argument("--study", dest="study_name", default=None,
                   help="study name within the storage (default: its only study)")


def _pareto_args(p: argparse.ArgumentParser) -> None:
    _study_target_args(p)
    p.add_argument("-f", "--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="write the front plot (front highlighted, dominated trials grey, "
                        "reference architectures marked)")
    p.add_argument("--ref-point", default=None, metavar="PSNR_DB,GFLOPS",
                   help="hypervolume reference point (default: the config's hpo.ref_point, else "
                        "min PSNR - 0.1 dB, max GFLOPs x 1.1)")


@command("pareto", "all trials and the Pareto front of a study, hypervolume, plot")(_pareto_args)
def run_pareto(args: argparse.Namespace) -> int:
    from nas.hpo import redact

    ref = _parse_ref_point(args.ref_point)
    study, base, spec = open_existing(args.study_target, args.storage, args.study_name)
    s = summarize(study, redact(spec), base=base, ref_point=ref)
    if args.format == "json":
        print(json.dumps(s.to_json(), indent=2))
    elif args.format == "csv":
        emit_table(s.trials, "csv", floatfmt="%.6g")
    else:
        print("\n".join(s.header()))
        if len(s.trials):
            emit_table(s.trials, "table", floatfmt="%.6g")
        front = s.front_frame
        if len(front):
            print(f"\nPareto front ({len(front)} trials, by GFLOPs):")
            emit_table(front[["trial", "psnr_db", "gflops", "params_m", "knee", *s.param_names]],
                       "table", floatfmt="%.6g")
    if args.plot is not None:
        if not len(s.trials):
            raise UsageError(f"--plot: study {s.name} has no trial to plot")
        path = plot_summary(s, args.plot)
        print(f"plot: {path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ export
def _export_args(p: argparse.ArgumentParser) -> None:
    _study_target_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, default=None, help="trial number")
    which.add_argument("--knee", action="store_true", help="the knee of the Pareto front")
    which.add_argument("--max-gflops", type=float, default=None, metavar="G",
                       help="the front trial with the best PSNR within G GFLOPs")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the ArchSpec here (default: print it)")


@command("export", "the ArchSpec (arch.json) of a chosen trial of a study")(_export_args)
def run_export(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from nas.archspec import load_archspec
    from nas.hpo import redact

    study, base, spec = open_existing(args.study_target, args.storage, args.study_name)
    s = summarize(study, redact(spec), base=base)
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
            raise UsageError(f"--knee: study {s.name} has no complete searched trial")
        number = s.knee
    else:
        g = args.max_gflops
        front = s.front_frame
        ok = front[front["gflops"] <= g]
        if not len(ok):
            cheapest = f"{front['gflops'].min():.4g}" if len(front) else "n/a"
            raise UsageError(f"--max-gflops {g:g}: no front trial within {g:g} GFLOPs "
                             f"(cheapest: {cheapest})")
        number = int(ok.sort_values(["psnr_db", "gflops"], ascending=[False, True]).iloc[0]["trial"])
    trial = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.number == number)
    path = _find(trial.user_attrs.get("arch_path"), base)
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
