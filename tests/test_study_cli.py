"""``acla-nas search / pareto / export`` end to end on a tiny config, bad configs, and worker
processes: two workers on one journal file, and a worker killed with SIGKILL mid-trial."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from nas.cli import main
from tests.study_fixtures import TINY_STUDY  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = json.loads(json.dumps(TINY_STUDY))
TINY["hpo"]["reference_trials"] = ["no_attention"]


def write_config(path: Path, **changes) -> Path:
    d = json.loads(json.dumps(TINY))
    for k, v in changes.items():
        cur = d
        *head, last = k.split("__")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def done_study(tmp_path_factory):
    """A finished tiny study (2 searched trials + the no_attention reference)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("study")
    cfg = write_config(tmp / "tiny.yaml")
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
    for name in ("study.db", "config.yaml", "pareto.csv", "pareto.json", "pareto.png"):
        assert (out / name).is_file(), name
    head = (out / "config.yaml").read_text().splitlines()[:2]
    assert head[0].startswith("# acla-nas search -c ") and "optuna" in head[1] and "git" in head[1]
    df = pd.read_csv(out / "pareto.csv")
    assert list(df["trial"]) == [0, 1, 2] and df.loc[0, "reference"] == "no_attention"
    assert df["front"].sum() >= 1 and not df.loc[0, "front"]
    assert {"search.penalty.lambda", "search.alpha_lr", "psnr_db", "gflops"} <= set(df.columns)
    for arch in df["arch"]:
        assert Path(arch).is_file()
    # running again finds the study complete: nothing new, same outputs, paths printed
    rc, stdout, _ = run_cli(capsys, "search", "-c", str(out.parent / "tiny.yaml"), "--out",
                            str(out), "-q")
    assert rc == 0
    assert f"front table: {out / 'pareto.csv'}" in stdout
    assert f"front plot:  {out / 'pareto.png'}" in stdout
    assert "hypervolume" in stdout and "knee:" in stdout
    assert len(pd.read_csv(out / "pareto.csv")) == 3


def test_pareto_formats_and_plot(done_study, capsys, tmp_path):
    from nas.pareto import hypervolume_2d

    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study))
    assert rc == 0
    assert "# hypervolume" in stdout and "dB x GFLOPs" in stdout and "# psnr_db:" in stdout
    assert "Pareto front" in stdout
    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study), "-f", "json")
    d = json.loads(stdout)
    assert d["directions"] == ["maximize", "minimize"] and d["metric_names"] == ["psnr_db", "gflops"]
    front = [(r["psnr_db"], r["gflops"]) for r in d["front"]]
    assert d["hypervolume"] == pytest.approx(hypervolume_2d(front, d["reference_point"]))
    assert d["knee_trial"] in [r["trial"] for r in d["front"]]
    rc, stdout, _ = run_cli(capsys, "pareto", str(done_study / "study.db"), "-f", "csv",
                            "--ref-point", "0,1", "--plot", str(tmp_path / "f.png"))
    assert rc == 0 and len(pd.read_csv(pd.io.common.StringIO(stdout))) == 3
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
    from nas.archspec import load_archspec

    rc, _, err = run_cli(capsys, "export", str(done_study), "--knee", "-o", str(tmp_path / "k.json"))
    assert rc == 0 and "->" in err
    spec = load_archspec(tmp_path / "k.json")
    assert spec.provenance["study"] == "tiny" and spec.provenance["trial"] >= 1
    y = build_model(spec)(torch.rand(1, 3, 8, 8))
    assert y.shape == (1, 3, 16, 16)
    rc, stdout, _ = run_cli(capsys, "export", str(done_study), "--trial", "0")
    assert rc == 0 and set(json.loads(stdout)["choices"].values()) == {"skip"}
    rc, stdout, _ = run_cli(capsys, "export", str(done_study), "--max-gflops", "1e9")
    front = pd.read_csv(done_study / "pareto.csv").query("front").set_index("trial")
    assert rc == 0
    assert front.loc[json.loads(stdout)["provenance"]["trial"], "psnr_db"] == front["psnr_db"].max()
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
    ({"search__steps": "ten"}, [], r"search\.steps: expected an integer"),
    ({"hpo__params": {}}, [], r"hpo\.params: empty search space"),
    ({}, ["hpo.params.search.tau.strat={type: float, low: 1, high: 2}"],
     r"did you mean 'search\.tau\.start'"),
])
def test_bad_config_is_one_line_and_changes_nothing(done_study, capsys, tmp_path, changes,
                                                    overrides, message):
    import re

    before = _digest(done_study / "study.db")
    cfg = write_config(tmp_path / "bad.yaml", **changes)
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
    cfg = write_config(tmp_path / "ok.yaml")
    rc, _, err = run_cli(capsys, "search", "-c", str(cfg), "--out", str(tmp_path / "o"),
                         "--storage", "postgresql+psycopg2://me:pw@127.0.0.1:1/none")
    assert rc == 2 and err.count("\n") == 1 and "pw" not in err and "--storage" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- worker processes
def spawn(args: list[str], tmp_path: Path, log: str, **env) -> subprocess.Popen:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
         "ACLA_NAS_CACHE": str(tmp_path / "cache"), **env}
    f = (tmp_path / log).open("w")
    return subprocess.Popen([sys.executable, "-m", "nas", "search", *args, "-q"], cwd=REPO, env=e,
                            stdout=f, stderr=subprocess.STDOUT)


def wait(p: subprocess.Popen, tmp_path: Path, log: str, timeout: float = 180) -> None:
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert rc == 0, (tmp_path / log).read_text()[-3000:]


def wait_for(cond, timeout: float = 120, what: str = "") -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def check_no_loss_or_duplicate(study, n_trials: int) -> list:
    """Exactly ``n_trials`` searched trials COMPLETE, each in its own run directory, and every
    killed trial retried once."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and "reference" not in t.user_attrs]
    assert len(done) == n_trials, [(t.number, t.state) for t in trials]
    dirs = [t.user_attrs["run_dir"] for t in done if "duplicate_of" not in t.user_attrs]
    assert len(set(dirs)) == len(dirs)  # (a duplicate reuses its twin's result and folder)
    roots = [t.user_attrs.get("retry_of", t.number) for t in done]
    assert len(set(roots)) == len(roots)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:
        assert sum(1 for r in roots if r == t.user_attrs.get("retry_of", t.number)) == 1
    return done


def kill_and_restart(tmp_path: Path, storage_args: list[str], study_of, env_first=None,
                     env_second=None, settle: float = 0.0) -> None:
    """Start a 3-trial study, SIGKILL the worker once trial 1 has a checkpoint, restart it, and
    check the study finishes with nothing lost or duplicated and the killed trial resumed."""
    cfg = write_config(tmp_path / "k.yaml", search__steps=40, search__checkpoint_every=5,
                       search__warmup_steps=5, hpo__trials=3, hpo__reference_trials=[],
                       hpo__heartbeat_interval=1, hpo__grace_period=2)
    out = tmp_path / "out"
    args = ["-c", str(cfg), "--out", str(out), *storage_args]
    p = spawn(args, tmp_path, "first.log", **(env_first or {}))
    wait_for(lambda: (out / "trials" / "1" / "supernet.pt").is_file() or p.poll() is not None,
             what="trial 1's first checkpoint")
    assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    study = study_of()
    before = {t.number: t.values for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert study.get_trials()[1].state == TrialState.RUNNING
    time.sleep(settle)
    q = spawn(args, tmp_path, "second.log", **(env_second or {}))
    wait(q, tmp_path, "second.log")
    study = study_of()
    done = check_no_loss_or_duplicate(study, 3)
    after = {t.number: t.values for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # completed trials untouched
    assert study.get_trials()[1].state == TrialState.FAIL
    retry = [t for t in done if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].user_attrs["run_dir"] == str(out / "trials" / "1")
    assert retry[0].user_attrs["resumed_from_step"] >= 5  # resumed from its checkpoint


def test_sigkill_mid_trial_then_restart_finishes_the_study(tmp_path):
    db = tmp_path / "out" / "study.db"
    kill_and_restart(tmp_path, [], lambda: optuna.load_study(study_name="tiny",
                                                             storage=f"sqlite:///{db}"))


def test_two_workers_share_a_journal_file(tmp_path):
    cfg = write_config(tmp_path / "j.yaml", search__steps=60, hpo__trials=4,
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
