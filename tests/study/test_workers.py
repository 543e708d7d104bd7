"""Workers: liveness of recorded processes, re-queueing (nas.study.workers)."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from nas.study import workers
from nas.study.storage import open_storage, parse_storage
from tests.conftest import dead_pid


def test_worker_liveness():
    me = workers.worker_id()
    assert workers.worker_alive(me) is True
    assert workers.worker_alive({**me, "pid": dead_pid()}) is False
    assert workers.worker_alive({**me, "host": "elsewhere"}) is None
    assert workers.worker_alive({**me, "ns": "pid:[1]"}) is None  # another container


def _running_trial_with_stale_heartbeat(tmp_path, worker):
    """A study on SQLite with 1 s heartbeats and one RUNNING trial of ``worker`` whose heartbeat
    is older than the grace period (its process stopped beating)."""
    storage = open_storage(parse_storage(None, tmp_path), heartbeat_interval=1, grace_period=1,
                           stale_trial_callback=workers.RequeueStaleTrial())
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    trial.set_user_attr("worker", worker)
    storage.record_heartbeat(workers.trial_id(storage, study, trial.number))
    time.sleep(2.5)
    return study, storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_local_worker_keeps_its_fail_reason_when_its_heartbeat_is_also_stale(tmp_path):
    # a torchrun restart takes longer than the grace period: the dead rank's trial is found both
    # by its PID and by its heartbeat; the PID check must win, or the reason is lost
    study, storage = _running_trial_with_stale_heartbeat(
        tmp_path, {**workers.worker_id(), "pid": dead_pid()})
    msgs = workers.reap_dead_trials(study, storage, max_retry=3)
    t0, retry = study.get_trials()
    assert t0.state == TrialState.FAIL
    assert str(t0.user_attrs.get("fail_reason")).startswith("killed: its worker"), t0.user_attrs
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert retry.params == t0.params and msgs == [
        "trial 0: its worker is gone; re-queued to resume from its checkpoint"]
    assert workers.reap_dead_trials(study, storage, max_retry=3) == []  # idempotent


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_remote_worker_is_failed_by_its_heartbeat_and_retried_with_the_reason(tmp_path):
    study, storage = _running_trial_with_stale_heartbeat(
        tmp_path, {**workers.worker_id(), "host": "elsewhere"})
    assert workers.reap_dead_trials(study, storage, max_retry=3) == []
    t0, retry = study.get_trials()
    assert t0.state == TrialState.FAIL and "fail_reason" not in t0.user_attrs
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert "stopped sending heartbeats" in retry.user_attrs["retry_reason"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_requeued_before_its_worker_died_is_not_requeued_twice(tmp_path):
    # the surviving rank re-queued the trial, then was killed before Optuna set its FAIL state:
    # after the restart the dead-worker check fails it, and must not add a second copy
    study, storage = _running_trial_with_stale_heartbeat(
        tmp_path, {**workers.worker_id(), "pid": dead_pid()})
    first = workers.requeue(study, study.get_trials()[0], max_retry=3, reason="interrupted")
    assert workers.requeue(study, study.get_trials()[0], max_retry=3) == first
    workers.reap_dead_trials(study, storage, max_retry=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].number == first and trials[1].user_attrs["retry_reason"] == "interrupted"
