"""``torchrun --nproc_per_node=2 -m nas search`` on the CPU (gloo): a study finishes with every
trial counted once and the same results as one process; a rank killed mid-trial makes the group
restart and the trial resume from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO, TINY_STUDY, check_no_loss_or_duplicate, wait_for

pytestmark = pytest.mark.slow


def _config(path, **search):
    d = yaml.safe_load(yaml.safe_dump(TINY_STUDY))
    d["hpo"].update(trials=2)
    d["data"]["batch_size"] = 2
    d["score"]["batch_size"] = 2
    d["search"].update(search)
    path.write_text(yaml.safe_dump(d))
    return path


def _torchrun(args, tmp_path, log, restarts=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "ACLA_NAS_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", f"--max-restarts={restarts}", "-m", "nas",
                             "search", *args], cwd=REPO, env=env, stdout=(tmp_path / log).open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _study(out):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")


def test_two_ranks_finish_a_study_like_one_process(tmp_path):
    cfg = _config(tmp_path / "t.yaml")
    p = _torchrun(["-c", str(cfg), "--out", str(tmp_path / "ddp")], tmp_path, "ddp.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "ddp.log").read_text()[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACLA_NAS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "nas", "search", "-c", str(cfg), "--out",
                        str(tmp_path / "one"), "-q"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp, one = _study(tmp_path / "ddp"), _study(tmp_path / "one")
    check_no_loss_or_duplicate(ddp, 2)
    assert [t.values for t in ddp.get_trials()] == [t.values for t in one.get_trials()]
    assert [t.params for t in ddp.get_trials()] == [t.params for t in one.get_trials()]


def _rank_pid(match: str, local_rank: int) -> int | None:
    out = subprocess.run(["pgrep", "-f", match], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return int(pid)
    return None


def test_killed_rank_restarts_the_group_and_the_trial_resumes(tmp_path):
    cfg = _config(tmp_path / "k.yaml", alpha_steps=60, checkpoint_every=5)
    cfg_text = yaml.safe_load(cfg.read_text())
    cfg_text["hpo"]["trials"] = 3
    cfg_text["hpo"]["reference_trials"] = []
    cfg.write_text(yaml.safe_dump(cfg_text))
    out = tmp_path / "out"
    p = _torchrun(["-c", str(cfg), "--out", str(out)], tmp_path, "k.log", restarts=1)
    try:
        wait_for(lambda: (out / "trials" / "1" / "search.pt").is_file() or p.poll() is not None,
                 timeout=300, what="trial 1's first checkpoint")
        pid = _rank_pid(f"search -c {cfg}", 1)
        assert pid is not None and p.poll() is None, (tmp_path / "k.log").read_text()[-3000:]
        os.kill(pid, signal.SIGKILL)
        assert p.wait(timeout=600) == 0, (tmp_path / "k.log").read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            time.sleep(1)
    study = _study(out)
    t1 = study.get_trials()[1]
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.get_trials()]
    # the surviving rank records the death itself ("killed: a process of the torchrun group
    # died"), or is stopped by torchrun first ("interrupted") and, when even that bookkeeping is
    # cut short, the restarted group finds the trial's dead worker ("killed: its worker ... died")
    assert t1.state == TrialState.FAIL and str(t1.user_attrs.get("fail_reason")).startswith(
        ("killed: a process of the torchrun group died", "interrupted", "killed: its worker")
    ), states
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["resumed_from_step"] >= 5
    check_no_loss_or_duplicate(study, 3)
