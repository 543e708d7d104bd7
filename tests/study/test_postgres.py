"""Workers on one study in PostgreSQL: two ``acla-nas search`` processes cooperate, and a worker
killed with SIGKILL mid-trial is failed by its heartbeat, re-queued and resumed.

Needs a server: ``ACLA_NAS_PG_URL=postgresql+psycopg2://user@127.0.0.1:PORT/db`` (``.ci/run``
starts a loopback-only PostgreSQL and exports it) and ``psycopg2`` (``pip install
'acla-nas[postgres]'``); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import kill_and_restart, spawn, wait, write_study_config

PG_URL = os.environ.get("ACLA_NAS_PG_URL")

pytestmark = [
    pytest.mark.skipif(not PG_URL, reason="ACLA_NAS_PG_URL is not set (.ci/run starts a local "
                                          "PostgreSQL server and sets it)"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None,
                       reason="psycopg2 is not installed (pip install 'acla-nas[postgres]')"),
]


@pytest.fixture
def study_name():
    name = f"pg_{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=PG_URL)
    except KeyError:
        pass


def load(name: str):
    return optuna.load_study(study_name=name, storage=PG_URL)


def test_two_workers_cooperate_on_one_study(tmp_path, study_name):
    cfg = write_study_config(tmp_path / "pg.yaml", search__alpha_steps=30, hpo__trials=4)
    args = ["-c", str(cfg), "--out", str(tmp_path / "out"), "--storage", PG_URL, "--study",
            study_name]
    ps = [spawn(args, tmp_path, f"w{i}.log") for i in range(2)]
    for i, p in enumerate(ps):
        wait(p, tmp_path, f"w{i}.log")
    trials = load(study_name).get_trials()
    refs = [t for t in trials if "reference" in t.user_attrs]
    done = [t for t in trials if t.state == TrialState.COMPLETE and "reference" not in t.user_attrs]
    assert len(refs) == 1 and refs[0].state == TrialState.COMPLETE  # enqueued once, by the creator
    assert 4 <= len(done) <= 5  # a last-moment race may start one extra trial
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    ran = [t for t in trials if "duplicate_of" not in t.user_attrs]
    assert len({t.user_attrs["run_dir"] for t in ran}) == len(ran)


def test_killed_worker_is_failed_by_heartbeat_and_its_trial_resumed(tmp_path, study_name):
    # the restarted worker claims another host: only the heartbeat can detect the dead trial
    kill_and_restart(tmp_path, ["--storage", PG_URL, "--study", study_name], lambda: load(study_name),
                     env_first={"ACLA_NAS_WORKER_HOST": "machine-a"},
                     env_second={"ACLA_NAS_WORKER_HOST": "machine-b"}, settle=2.5)
