"""``acla-nas search / pareto / export`` end to end on a tiny config, bad configs, and worker
processes: two workers on one journal file, and a worker killed with SIGKILL mid-trial."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from nas.cli import main
from tests.conftest import REPO, kill_and_restart, spawn, wait, wait_for, write_study_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def done_study(tmp_path_factory):
    """A finished tiny study (2 searched trials + the no_attention reference)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("study")
    cfg = write_study_config(tmp / "tiny.yaml")
    out = tmp / "out"
    try:
        rc = main(["search", "-c", str(cfg), "--out", str(out), "-q"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# -------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("cmd", ["search", "pareto", "export"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: acla-nas " + cmd in capsys.readouterr().out


# ------------------------------------------------------------------------------------ search
def test_search_writes_front_and_prints_where(done_study, capsys):
    out = done_study
    for name in ("study.db", "config.yaml", "pareto.csv", "trials.csv", "pareto.json",
                 "pareto.png"):
        assert (out / name).is_file(), name
    head = (out / "config.yaml").read_text().splitlines()[:2]
    assert head[0].startswith("# acla-nas search -c ") and "optuna" in head[1] and "git" in head[1]
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2] and trials.loc[0, "reference"] == "no_attention"
    assert {"search.penalty.lambda", "search.alpha_lr", "psnr_db", "gflops", "arch_key"} <= \
        set(trials.columns)
    for arch in trials["arch"]:  # relative to the study folder, which may move
        assert not Path(arch).is_absolute() and (out / arch).is_file()
    archs = pd.read_csv(out / "pareto.csv")  # one row per distinct architecture
    assert len(archs) == trials["arch_key"].nunique() and archs["front"].sum() >= 1
    assert {"psnr_db", "psnr_se", "n_seeds", "delta_db", "delta_se", "tie", "references"} <= \
        set(archs.columns)
    # the noise floor: the front, the references and the plain backbone with 2 seeds each
    assert (archs.loc[archs["front"] | archs["references"].notna(), "n_seeds"] == 2).all()
    # running again finds the study complete: nothing new, same outputs, paths printed
    rc, stdout, _ = run_cli(capsys, "search", "-c", str(out.parent / "tiny.yaml"), "--out",
                            str(out), "-q")
    assert rc == 0
    assert "the study is complete" in stdout
    assert f"front table: {out / 'pareto.csv'}" in stdout
    assert f"front plot:  {out / 'pareto.png'}" in stdout
    assert "hypervolume" in stdout and "knee:" in stdout and "+-" in stdout
    assert len(pd.read_csv(out / "trials.csv")) == 3


def test_two_trials_of_one_architecture_report_one_score(done_study):
    """The no-attention reference and a searched trial that derives the plain backbone agree
    exactly: the score is a function of the architecture, not of the trial."""
    trials = pd.read_csv(done_study / "trials.csv").fillna({"reference": ""})
    done = trials[trials["state"] == "COMPLETE"]
    plain = done.loc[done["reference"] == "no_attention", "arch_key"].iloc[0]
    twins = done[(done["arch_key"] == plain) & (done["reference"] == "")]
    assert len(twins) >= 1, "no searched trial derived the plain backbone: the check is vacuous"
    for _, group in done.groupby("arch_key"):
        assert group["psnr_db"].nunique() == 1


def test_pareto_formats_and_plot(done_study, capsys, tmp_path):
    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study))
    assert rc == 0
    assert "# hypervolume" in stdout and "dB x GFLOPs" in stdout and "# psnr_db:" in stdout
    assert "Pareto front" in stdout and "# noise:" in stdout and "reference no_attention" in stdout
    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study), "-f", "json")
    d = json.loads(stdout)
    assert d["directions"] == ["maximize", "minimize"] and d["metric_names"] == ["psnr_db", "gflops"]
    front = [(r["psnr_db"], r["gflops"]) for r in d["front"]]
    # independent of hypervolume_2d: the staircase area of the sorted front, summed by hand
    r_psnr, r_gflops = d["reference_point"]
    area, prev = 0.0, r_psnr
    for psnr, gflops in sorted(front, key=lambda p: p[0]):  # higher PSNR needs more GFLOPs
        area += (psnr - prev) * (r_gflops - gflops)
        prev = psnr
    assert d["hypervolume"] == pytest.approx(area)
    knee_trials = [int(x) for r in d["front"] if r["knee"] for x in str(r["trials"]).split(",")]
    assert d["knee_trial"] in knee_trials
    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study / "study.db"), "-f", "csv",
                            "--ref-point", "0,1", "--plot", str(tmp_path / "f.png"))
    assert rc == 0 and len(pd.read_csv(pd.io.common.StringIO(stdout))) == len(d["architectures"])
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = run_cli(capsys, "pareto", str(done_study), "--ref-point", "x")
    assert rc == 2 and err.count("\n") == 1 and "--ref-point" in err
    rc, _, err = run_cli(capsys, "pareto", str(tmp_path / "nothing"))
    assert rc == 2 and "no such results folder" in err
    rc, _, err = run_cli(capsys, "pareto", "nope", "--storage",
                         f"sqlite:///{done_study / 'study.db'}")
    assert rc == 2 and "no study 'nope'" in err


def test_export(done_study, capsys, tmp_path):
    import torch

    from nas import build_model
    from nas.engine.archspec import load_archspec

    rc, _, err = run_cli(capsys, "export", str(done_study), "--knee", "-o", str(tmp_path / "k.json"))
    assert rc == 0 and "->" in err
    spec = load_archspec(tmp_path / "k.json")
    assert spec.provenance["study"] == "tiny"
    y = build_model(spec)(torch.rand(1, 3, 8, 8))
    assert y.shape == (1, 3, 16, 16)
    rc, stdout, _ = run_cli(capsys, "export", str(done_study), "--trial", "0")
    assert rc == 0 and set(json.loads(stdout)["choices"].values()) == {"skip"}
    rc, stdout, _ = run_cli(capsys, "export", str(done_study), "--max-gflops", "1e9")
    archs = pd.read_csv(done_study / "pareto.csv")
    front = archs[archs["front"]]
    best = front.loc[front["psnr_db"].idxmax()]
    assert rc == 0
    assert json.loads(stdout)["provenance"]["trial"] == int(str(best["trials"]).split(",")[0])
    rc, _, err = run_cli(capsys, "export", str(done_study), "--max-gflops", "1e-9")
    assert rc == 2 and "no front trial within" in err and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "export", str(done_study), "--trial", "99")
    assert rc == 2 and "--trial 99" in err
    with pytest.raises(SystemExit) as e:
        main(["export", str(done_study)])  # one of --trial/--knee/--max-gflops is required
    assert e.value.code == 2


# ------------------------------------------------------------------------------- bad configs
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("changes, overrides, message", [
    ({"serch": {}}, [], r"serch: unknown key \(did you mean 'search'\?\)"),
    ({"search__alpha_steps": "ten"}, [], r"search\.alpha_steps: expected an integer"),
    ({"hpo__params": {}}, [], r"hpo\.params: empty search space"),
    ({}, ["hpo.params.search.tau.strat={type: float, low: 1, high: 2}"],
     r"did you mean 'search\.tau\.start'"),
])
def test_bad_config_is_one_line_and_changes_nothing(done_study, capsys, tmp_path, changes,
                                                    overrides, message):
    import re

    before = _digest(done_study / "study.db")
    cfg = write_study_config(tmp_path / "bad.yaml", **changes)
    argv = ["search", "-c", str(cfg), "--out", str(done_study)]
    for o in overrides:
        argv += ["--set", o]
    rc, stdout, err = run_cli(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("acla-nas search: error: " + str(cfg)) and re.search(message, err), err
    assert _digest(done_study / "study.db") == before
    # and into a fresh folder: no storage is created at all
    rc, _, _ = run_cli(capsys, *argv[:3], "--out", str(tmp_path / "fresh"), *argv[5:])
    assert rc == 2 and not (tmp_path / "fresh").exists()


def test_unreachable_storage(capsys, tmp_path):
    cfg = write_study_config(tmp_path / "ok.yaml")
    rc, _, err = run_cli(capsys, "search", "-c", str(cfg), "--out", str(tmp_path / "o"),
                         "--storage", "postgresql+psycopg2://me:pw@127.0.0.1:1/none")
    assert rc == 2 and err.count("\n") == 1 and "pw" not in err and "--storage" in err
    assert not (tmp_path / "o").exists()


def test_sigkill_mid_trial_then_restart_finishes_the_study(tmp_path):
    db = tmp_path / "out" / "study.db"
    kill_and_restart(tmp_path, [], lambda: optuna.load_study(study_name="tiny",
                                                             storage=f"sqlite:///{db}"))


def test_two_workers_share_a_journal_file(tmp_path):
    cfg = write_study_config(tmp_path / "j.yaml", search__alpha_steps=30, hpo__trials=4,
                       hpo__reference_trials=[])
    log = tmp_path / "out" / "journal.log"
    args = ["-c", str(cfg), "--out", str(tmp_path / "out"), "--storage", f"journal:{log}"]
    ps = [spawn(args, tmp_path, f"w{i}.log") for i in range(2)]
    for i, p in enumerate(ps):
        wait(p, tmp_path, f"w{i}.log")
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="tiny",
                              storage=optuna.storages.JournalStorage(JournalFileBackend(str(log))))
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # both workers ran trials; a last-moment race may start one extra trial
    assert 4 <= len(done) <= 5 and len(done) == len(trials)
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    searched = [t for t in done if "duplicate_of" not in t.user_attrs]
    assert len({t.user_attrs["run_dir"] for t in searched}) == len(searched)


@pytest.mark.slow
def test_two_workers_starting_together_on_a_new_sqlite_study(tmp_path):
    """Two `acla-nas search` processes started at the same moment on a study that does not exist
    yet (5 repetitions): both finish, the reference is enqueued once, no trial runs twice."""
    for rep in range(5):
        d = tmp_path / f"rep{rep}"
        d.mkdir()
        cfg = write_study_config(d / "s.yaml", hpo__trials=2)
        out = d / "out"
        args = ["-c", str(cfg), "--out", str(out)]
        ps = [spawn(args, d, f"w{i}.log") for i in range(2)]
        for i, p in enumerate(ps):
            wait(p, d, f"w{i}.log")
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
        trials = study.get_trials()
        refs = [t for t in trials if "reference" in t.user_attrs]
        done = [t for t in trials if t.state == TrialState.COMPLETE and "reference" not in t.user_attrs]
        assert len(refs) == 1 and refs[0].state == TrialState.COMPLETE
        assert 2 <= len(done) <= 3  # a last-moment race may start one extra trial
        ran = [t for t in trials if "duplicate_of" not in t.user_attrs]
        assert len({t.user_attrs["run_dir"] for t in ran}) == len(ran)


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.strip().splitlines() if ln.strip()]


@pytest.mark.slow
def test_readme_first_command_runs_on_a_fresh_clone(tmp_path):
    """The README's first line, as written, in a fresh clone of the committed tree and a fresh
    virtual environment (sharing this interpreter's packages, so no download of torch), run until
    the first trial of the quickstart study has started."""
    import shutil

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    first, second = _readme_commands()[:2]
    assert "python -m nas search -c experiments/quickstart.yaml" in first
    assert "pytest" in second
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    log = (tmp_path / "first.log").open("w")
    p = subprocess.Popen(["bash", "-c", first], cwd=clone, env=env, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    # trial 0 is the no_attention reference: its ArchSpec is written before it is scored
    started = clone / "runs" / "quickstart" / "trials" / "0" / "arch.json"
    try:
        wait_for(lambda: started.is_file() or p.poll() is not None, timeout=600,
                 what="the first trial of the quickstart")
        text = (tmp_path / "first.log").read_text()
        assert started.is_file(), text[-3000:]
        assert (clone / "runs" / "quickstart" / "study.db").is_file()
        assert str(venv) in subprocess.run(
            ["bash", "-c", "command -v acla-nas"], env=env, capture_output=True, text=True).stdout
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
