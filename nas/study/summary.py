"""Reading a study: all trials and all distinct architectures as tables, the noise-aware Pareto
front (references included), hypervolume and knee, and the ``pareto.csv``/``pareto.json``/
``pareto.png`` outputs (:mod:`nas.study.noise` defines the per-architecture columns).

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
        ``(study, study folder or None, storage display string, storage object)``.

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
    if len(study.directions) != 2 or [d.name for d in study.directions] != ["MAXIMIZE", "MINIMIZE"]:
        raise UsageError(f"{shown}: study {name!r} is not a PSNR (maximize) / GFLOPs (minimize) "
                         f"study: its directions are {[d.name.lower() for d in study.directions]}")
    return study, spec.folder, shown, st


def _under(path: Path, base: Path | None) -> str:
    """``path`` relative to the study folder ``base`` when it lies inside it (the tables written
    there stay valid when the folder moves), else as given."""
    if base is not None:
        try:
            return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


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
    """A study as tables: every trial, every distinct architecture, the front and its noise.

    Attributes:
        name, storage: the study and where it is stored (for headers).
        trials: one row per trial (``arch_key`` links it to ``archs``).
        archs: one row per distinct architecture of the COMPLETE trials
            (:func:`nas.study.noise.architecture_rows`), front first.
        front: the front's architecture keys, by GFLOPs.
        knee: the trial number of the knee architecture (its first trial), or ``None``.
        ref_point: ``(psnr_db, gflops)`` of the hypervolume.
        ref_point_source: where the reference point came from.
        hypervolume: of the front's mean scores (dB x GFLOPs).
        noise_sd: pooled standard deviation of one architecture's score over seeds (dB).
        within_noise: the whole front is one tie.
        conventions, axis_labels: what the numbers mean.
        param_names: the outer hyperparameters.
    """

    name: str
    storage: str
    trials: Any
    archs: Any
    front: list[str]
    knee: int | None
    ref_point: tuple[float, float] | None
    ref_point_source: str
    hypervolume: float
    noise_sd: float = math.nan
    within_noise: bool = False
    conventions: dict = field(default_factory=dict)
    axis_labels: dict = field(default_factory=dict)
    param_names: list = field(default_factory=list)
    importances: dict = field(default_factory=dict)

    @property
    def front_frame(self):
        """The front's architecture rows, by GFLOPs."""
        df = self.archs
        return df[df["front"].astype(bool)].sort_values("gflops").reset_index(drop=True)

    def header(self) -> list[str]:
        """``# ...`` lines: counts, conventions, noise, hypervolume and its reference point, knee."""
        df = self.trials
        done = df[df["state"] == "COMPLETE"] if len(df) else df
        n_ref = done.loc[done["reference"] != "", "reference"].nunique() if len(df) else 0
        searched = int((done["reference"] == "").sum()) if len(df) else 0
        lines = [f"# study {self.name} ({self.storage}): {searched} searched trials complete, "
                 f"{n_ref} reference architectures, {len(self.archs)} distinct architectures, "
                 f"{len(self.front)} on the front"]
        for k, v in self.conventions.items():
            lines.append(f"# {k}: {v}")
        if not math.isnan(self.noise_sd):
            lines.append(f"# noise: one architecture's score varies by {self.noise_sd:.3f} dB "
                         f"(pooled SD over scoring seeds); +- columns are standard errors")
        if self.ref_point is not None:
            lines.append(f"# hypervolume {self.hypervolume:.6g} dB x GFLOPs against reference point "
                         f"({self.ref_point[0]:g} dB, {self.ref_point[1]:g} GFLOPs) "
                         f"[{self.ref_point_source}]")
        if self.knee is not None:
            lines.append(f"# knee: trial {self.knee}")
        for metric, imp in self.importances.items():
            parts = ", ".join(f"{k} {v:.2f}" for k, v in imp.items())
            lines.append(f"# parameter importances for {metric} (fANOVA over the searched "
                         f"trials): {parts}")
        if self.within_noise:
            lines.append("# WARNING: the front is within noise - no front point beats the next "
                         "cheaper one by more than 2 standard errors")
        near = self.near_front
        if near:
            lines.append(f"# WARNING: {len(near)} architecture(s) off the front are within noise of "
                         "a front point that dominates them (<= 2 standard errors): the front "
                         "does not beat them beyond noise")
        return lines

    @property
    def near_front(self) -> list[str]:
        """Architecture keys off the front within noise of a front point dominating them."""
        df = self.archs
        if not len(df) or "near_front" not in df:
            return []
        return list(df.loc[df["near_front"].astype(bool), "arch_key"])

    def to_json(self) -> dict:
        """The summary as JSON-ready data (what ``pareto.json`` holds)."""
        def rows(df):
            return json.loads(df.to_json(orient="records", double_precision=10))

        return {"study": self.name, "storage": self.storage, "directions": list(DIRECTIONS),
                "metric_names": list(METRIC_NAMES), "conventions": self.conventions,
                "noise_sd_db": None if math.isnan(self.noise_sd) else self.noise_sd,
                "front_within_noise": self.within_noise,
                "near_front_within_noise": self.near_front,
                "reference_point": list(self.ref_point) if self.ref_point else None,
                "reference_point_source": self.ref_point_source,
                "hypervolume": self.hypervolume, "hypervolume_unit": "dB x GFLOPs",
                "knee_trial": self.knee, "parameter_importances": self.importances,
                "front": rows(self.front_frame),
                "architectures": rows(self.archs), "trials": rows(self.trials)}


ARCH_COLUMNS = ["arch_key", "references", "trials", "gflops", "psnr_db", "psnr_se", "n_seeds",
                "delta_db", "delta_se", "front", "tie", "knee", "near_front"]


def summarize_study(study, storage: str, base: Path | None = None,
                    ref_point: tuple[float, float] | None = None,
                    storage_obj: Any = None) -> StudySummary:
    """Tabulate a study (see :class:`StudySummary`).

    Args:
        study: an Optuna study with directions (maximize PSNR, minimize GFLOPs).
        storage: storage description for the header.
        base: study folder, to find ArchSpec files recorded with other working directories.
        ref_point: ``(psnr_db, gflops)``; default: the study's ``ref_point`` user attr, else
            :func:`nas.study.pareto.default_reference_point` over the distinct architectures.
        storage_obj: the storage object (for the cached scores in the study's system
            attributes); without it only the trial values are used.
    """
    import pandas as pd

    from nas.engine.scoring import pooled_seed_sd
    from nas.study.noise import (
        PLAIN_ATTR,
        PROTOCOL_ATTR,
        architecture_rows,
        front_within_noise,
        scores_by_arch,
    )

    with quiet_optuna():
        trials = study.get_trials(deepcopy=False)
    sys_attrs: dict = {}
    if storage_obj is not None:
        sys_attrs = storage_obj.get_study_system_attrs(
            storage_obj.get_study_id_from_name(study.study_name))
    scores = scores_by_arch(sys_attrs, sys_attrs.get(PROTOCOL_ATTR, "")) if sys_attrs else {}
    for t in trials:  # trials whose scores are not cached (another protocol): their own value
        ak = _arch_key_of(t)
        if ak is not None and ak not in scores:
            scores[ak] = {-1: float(t.values[0])}
    arch_rows = architecture_rows(trials, scores, sys_attrs.get(PLAIN_ATTR), key=_arch_key_of)
    by_key = {r["arch_key"]: r for r in arch_rows}
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
        ak = ua.get("arch_key") or (f"trial{t.number}" if t.state.name == "COMPLETE" else "")
        row = {"trial": t.number, "state": t.state.name, "reference": ua.get("reference", ""),
               "psnr_db": float(vals[0]), "gflops": float(vals[1]),
               "params_m": ua["params"] / 1e6 if "params" in ua else math.nan,
               "arch_key": ak, "front": bool(by_key.get(ak, {}).get("front", False)),
               "seconds": round(trial_seconds(t), 1),
               "retry_of": ua.get("retry_of", ""), "duplicate_of": ua.get("duplicate_of", ""),
               "fail_reason": reason}
        for p in params:
            row[p] = t.params.get(p)
        row["arch"] = _under(arch, base) if arch else ua.get("arch_path", "")
        rows.append(row)
    cols = ["trial", "state", "reference", "psnr_db", "gflops", "params_m", "arch_key", "front",
            "seconds", "retry_of", "duplicate_of", "fail_reason", *params, "arch"]
    df = pd.DataFrame(rows, columns=cols)
    adf = pd.DataFrame([{**r, "references": ",".join(r["references"]),
                         "trials": ",".join(str(n) for n in r["trials"])} for r in arch_rows],
                       columns=ARCH_COLUMNS)
    front_rows = [r for r in arch_rows if r["front"]]
    front = [r["arch_key"] for r in sorted(front_rows, key=lambda r: r["gflops"])]
    source = "given"
    if ref_point is None and study.user_attrs.get("ref_point"):
        ref_point = tuple(float(v) for v in study.user_attrs["ref_point"])
        source = "hpo.ref_point of the config"
    pts_all = [(r["psnr_db"], r["gflops"]) for r in arch_rows if not math.isnan(r["psnr_db"])]
    if ref_point is None and pts_all:
        ref_point = pareto.default_reference_point(pts_all)
        source = "default: min PSNR - 0.1 dB, max GFLOPs x 1.1 over all distinct architectures"
    pts = [(r["psnr_db"], r["gflops"]) for r in front_rows]
    hv = pareto.hypervolume_2d(pts, ref_point) if (pts and ref_point) else 0.0
    knee = None
    for r in arch_rows:
        if r["knee"]:
            knee = min(r["trials"])
    noise = pooled_seed_sd([[v for k, v in d.items() if k >= 0] for d in scores.values()])
    return StudySummary(name=study.study_name, storage=storage, trials=df, archs=adf, front=front,
                        knee=knee, ref_point=ref_point, ref_point_source=source, hypervolume=hv,
                        noise_sd=noise, within_noise=front_within_noise(arch_rows),
                        conventions=dict(study.user_attrs.get("conventions") or {}),
                        axis_labels=dict(study.user_attrs.get("axis_labels") or {}),
                        param_names=params, importances=param_importances(trials))


def param_importances(trials, min_trials: int = 4) -> dict[str, dict[str, float]]:
    """fANOVA importance of each outer hyperparameter for each objective (Optuna's
    ``FanovaImportanceEvaluator``, seeded; Hutter et al. 2014), over the COMPLETE searched
    trials that sampled their own values (not references, not duplicates).

    Returns:
        ``{"psnr_db": {param: importance}, "gflops": {...}}`` (importances sum to 1); empty with
        fewer than ``min_trials`` such trials or no parameter.
    """
    import optuna

    own = [t for t in trials if t.state.name == "COMPLETE" and t.params
           and not t.user_attrs.get("reference") and "duplicate_of" not in t.user_attrs]
    if len(own) < min_trials:
        return {}
    with quiet_optuna():
        study = optuna.create_study(directions=list(DIRECTIONS))  # in memory, to evaluate
        study.add_trials(own)
    out = {}
    for i, metric in enumerate(METRIC_NAMES):
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError):  # e.g. every trial has the same value
            continue
        out[metric] = {k: round(float(v), 4) for k, v in imp.items()}
    return out


def _arch_key_of(t) -> str | None:
    """A trial's architecture key (trials of earlier versions: keyed by their number)."""
    if t.state.name != "COMPLETE":
        return None
    return t.user_attrs.get("arch_key") or f"trial{t.number}"


def check_plot_path(path: str | Path) -> None:
    """Refuse a ``--plot`` file whose suffix matplotlib cannot write (no suffix means PNG).

    Raises:
        UsageError: ``--plot <path>: unknown image format '<suffix>' (...)``.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise UsageError(f"--plot {path}: unknown image format {fmt!r} (matplotlib writes "
                         f"{', '.join(sorted(known))})")


def plot_summary(s: StudySummary, path: Path) -> Path:
    """Render :class:`StudySummary` with :func:`nas.study.pareto.plot_front`: every distinct
    architecture with its +-1 SE bar, the front in colour (ties hollow), references as stars."""
    adf = s.archs
    ok = adf[~adf["psnr_db"].isna()].reset_index(drop=True)
    points = list(zip(ok["psnr_db"], ok["gflops"]))
    labels = [r.references or f"#{r.trials.split(',')[0]}" for r in ok.itertuples()]
    knee = None
    hits = ok.index[ok["knee"].astype(bool)]
    if len(hits):
        knee = int(hits[0])
    title = (f"{s.name}: {len(points)} architectures, front {len(s.front)}, hypervolume "
             f"{s.hypervolume:.4g} dB x GFLOPs" + (" - front within noise" if s.within_noise
                                                    else ""))
    return pareto.plot_front(
        path, points, list(ok["front"].astype(bool)), labels=labels,
        errors=[0.0 if math.isnan(e) else e for e in
                [d if not math.isnan(d) else p for d, p in zip(ok["delta_se"], ok["psnr_se"])]],
        ties=list(ok["tie"].astype(bool)), reference=[bool(r) for r in ok["references"]],
        reference_point=s.ref_point, knee=knee, title=title,
        xlabel=s.axis_labels.get("gflops", "GFLOPs (FLOPs = 2 x MACs)"),
        ylabel=s.axis_labels.get("psnr_db", "PSNR (dB)"),
        error_label="+-1 SE of the paired difference to the plain backbone")


def write_outputs(s: StudySummary, out: Path, plot: bool = True) -> dict[str, Path]:
    """Write ``pareto.csv`` (one row per distinct architecture, front first), ``trials.csv``
    (every trial), ``pareto.json`` and ``pareto.png``."""
    from nas.io import atomic_write_json
    from nas.tables import emit_table

    paths = {"csv": out / "pareto.csv", "trials": out / "trials.csv", "json": out / "pareto.json"}
    emit_table(s.archs, "csv", paths["csv"], floatfmt="%.6g")
    emit_table(s.trials, "csv", paths["trials"], floatfmt="%.6g")
    atomic_write_json(paths["json"], s.to_json())
    if plot and len(s.archs):
        paths["png"] = plot_summary(s, out / "pareto.png")
    return paths
