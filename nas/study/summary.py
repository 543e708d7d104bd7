"""Reading a study: all trials as a table, the Pareto front, hypervolume and knee, and the
``pareto.csv``/``pareto.json``/``pareto.png`` outputs.

A study is named by its results folder (``results/quickstart``, holding ``study.db`` or a journal
``*.log``), a storage file, a storage URL, or a storage plus a study name
(:func:`open_existing`). Optuna's own CLI and optuna-dashboard read the same storages, e.g.
``optuna trials --storage sqlite:///results/quickstart/study.db --study-name quickstart``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import UsageError, did_you_mean
from nas.study import pareto
from nas.study.run import DIRECTIONS, METRIC_NAMES, trial_seconds
from nas.study.storage import open_storage, parse_storage, quiet_optuna, storage_of_target


def open_existing(target: str, storage: str | None = None, name: str | None = None):
    """Load a study for reading.

    Args:
        target: results folder, ``study.db``/journal file, storage URL, or (with ``storage``)
            the study name.
        storage: storage spec; then ``target`` is the study name.
        name: study name within the storage (default: its only study).

    Returns:
        ``(study, study folder or None, storage display string)``.

    Raises:
        UsageError: missing file or folder, unreachable storage, unknown or ambiguous study.
    """
    import optuna

    if storage is not None:
        spec = parse_storage(storage)
        name = name or target
    else:
        spec = storage_of_target(target)
    st = open_storage(spec, create=False)
    shown = spec.display()
    names = optuna.get_all_study_names(st)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise UsageError(f"{shown}: the storage holds no study")
        else:
            raise UsageError(f"{shown}: several studies ({', '.join(names)}); choose one with --study")
    if name not in names:
        raise UsageError(f"{shown}: no study {name!r}{did_you_mean(name, names)}; studies: "
                         f"{', '.join(names) or '(none)'}")
    with quiet_optuna():
        study = optuna.load_study(study_name=name, storage=st)
    return study, spec.folder, shown


def find_file(path: str | None, base: Path | None) -> Path | None:
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
        """The front's rows, by GFLOPs."""
        df = self.trials
        return df[df["front"].astype(bool)].sort_values("gflops").reset_index(drop=True)

    def header(self) -> list[str]:
        """``# ...`` lines: counts, conventions, hypervolume and its reference point, knee."""
        df = self.trials
        n_ref = df.loc[(df["reference"] != "") & (df["state"] == "COMPLETE"), "reference"].nunique() \
            if len(df) else 0
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
        """The summary as JSON-ready data (what ``pareto.json`` holds)."""
        def rows(df):
            return json.loads(df.to_json(orient="records", double_precision=10))

        return {"study": self.name, "storage": self.storage, "directions": list(DIRECTIONS),
                "metric_names": list(METRIC_NAMES), "conventions": self.conventions,
                "reference_point": list(self.ref_point) if self.ref_point else None,
                "reference_point_source": self.ref_point_source,
                "hypervolume": self.hypervolume, "hypervolume_unit": "dB x GFLOPs",
                "knee_trial": self.knee, "front": rows(self.front_frame),
                "trials": rows(self.trials)}


def summarize_study(study, storage: str, base: Path | None = None,
              ref_point: tuple[float, float] | None = None) -> StudySummary:
    """Tabulate a study: one row per trial, the front (Optuna's ``study.best_trials`` among
    searched trials), hypervolume against the reference point, and the knee.

    Args:
        study: an Optuna study with directions (maximize PSNR, minimize GFLOPs).
        storage: storage description for the header.
        base: study folder, to find ArchSpec files recorded with other working directories.
        ref_point: ``(psnr_db, gflops)``; default: the study's ``ref_point`` user attr, else
            :func:`nas.study.pareto.default_reference_point` over all complete trials.
    """
    import pandas as pd

    with quiet_optuna():
        trials = study.get_trials(deepcopy=False)
        best = {t.number for t in study.best_trials if "reference" not in t.user_attrs}
    params: list[str] = []
    for t in trials:
        for p in t.params:
            if p not in params:
                params.append(p)
    retried_as = {int(t.system_attrs["failed_trial"]): t for t in trials
                  if "failed_trial" in t.system_attrs}
    rows = []
    for t in trials:
        ua = t.user_attrs
        reason = ua.get("fail_reason", "")
        if t.state.name == "FAIL" and not reason and t.number in retried_as:
            r = retried_as[t.number]
            why = r.user_attrs.get("retry_reason", "its worker stopped")
            reason = f"killed ({why}); retried as trial {r.number}"
        vals = t.values if t.values is not None and len(t.values) == 2 else [math.nan, math.nan]
        arch = find_file(ua.get("arch_path"), base)
        row = {"trial": t.number, "state": t.state.name, "reference": ua.get("reference", ""),
               "psnr_db": float(vals[0]), "gflops": float(vals[1]),
               "params_m": ua["params"] / 1e6 if "params" in ua else math.nan,
               "front": t.number in best, "knee": False,
               "seconds": round(trial_seconds(t), 1),
               "retry_of": ua.get("retry_of", ""), "duplicate_of": ua.get("duplicate_of", ""),
               "fail_reason": reason}
        for p in params:
            row[p] = t.params.get(p)
        row["arch"] = str(arch) if arch else ua.get("arch_path", "")
        rows.append(row)
    cols = ["trial", "state", "reference", "psnr_db", "gflops", "params_m", "front", "knee",
            "seconds", "retry_of", "duplicate_of", "fail_reason", *params, "arch"]
    df = pd.DataFrame(rows, columns=cols)
    complete = df[df["state"] == "COMPLETE"]
    front_df = df[df["front"].astype(bool)].sort_values("gflops")
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
    """Render :class:`StudySummary` with :func:`nas.study.pareto.plot_front`."""
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
    from nas.tables import emit_table

    paths = {"csv": out / "pareto.csv", "json": out / "pareto.json"}
    emit_table(s.trials, "csv", paths["csv"], floatfmt="%.6g")
    atomic_write_json(paths["json"], s.to_json())
    if plot and len(s.trials):
        paths["png"] = plot_summary(s, out / "pareto.png")
    return paths

