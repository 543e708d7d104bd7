"""Workers of a study: who runs a trial, whether that process still lives, and re-queueing the
trials of dead workers so that they resume from their checkpoint.

RDB storages record heartbeats; a trial whose worker stopped beating is failed by Optuna and
re-queued by :class:`RequeueStaleTrial`. Every trial also records its worker (host, PID namespace,
PID, start time); a worker on the same host re-queues trials whose process is gone at once
(:func:`fail_dead_local_trials`), which works on every storage, journal files included (they
have no heartbeats). A re-queued trial keeps its parameters and user attributes, and records the
trial it retries (system attrs ``failed_trial``, ``retry_history``, as Optuna's own
``RetryFailedTrialCallback`` does).

Only Optuna's public API is used: the storage object is the one :mod:`nas.study.storage`
opened, and trial ids come from ``storage.get_trial_id_from_study_id_trial_number``.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

from nas.study.storage import quiet_optuna


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_id() -> dict:
    """This process as ``{"host", "ns", "pid", "start"}``: host name (``ACLA_NAS_WORKER_HOST`` if
    set), PID namespace (containers on one host differ), PID and process start time (PID reuse)."""
    pid = os.getpid()
    return {"host": os.environ.get("ACLA_NAS_WORKER_HOST") or socket.gethostname(),
            "ns": _pid_namespace(), "pid": pid, "start": _proc_start(pid)}


def worker_alive(w: Mapping[str, Any]) -> bool | None:
    """Whether a recorded worker process still runs; ``None`` if it ran on another host or in
    another PID namespace (then only heartbeats can tell)."""
    me = worker_id()
    if not isinstance(w, Mapping) or w.get("host") != me["host"] or w.get("ns") != me["ns"]:
        return None
    pid = int(w.get("pid", -1))
    if pid == me["pid"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    start = _proc_start(pid)
    return not (w.get("start") and start and start != w.get("start"))


def trial_id(storage, study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (public storage API)."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


def root_trial(storage, study, number: int) -> int:
    """The number of the first trial of a retry series (``number`` itself if it is no retry)."""
    attrs = storage.get_trial_system_attrs(trial_id(storage, study, number))
    hist = attrs.get("retry_history") or []
    return int(hist[0]) if hist else int(number)


def requeue(study, trial, max_retry: int | None, reason: str = "") -> int | None:
    """Put a copy of a failed ``trial`` (a FrozenTrial; same params and user attrs) back in the
    queue, with the retry bookkeeping of Optuna's ``RetryFailedTrialCallback``.

    Args:
        study: the study.
        trial: the failed trial.
        max_retry: at most this many retries of one series (``None``: unlimited).
        reason: why it failed, recorded as the copy's ``retry_reason``.

    Returns:
        The number the copy will get (the next trial number); the number of the existing copy
        when ``trial`` was re-queued before (so every path may call this: a trial whose
        bookkeeping was cut short between its re-queue and its FAIL state is found again by the
        dead-worker check after a restart); ``None`` when ``max_retry`` retries were already
        made.
    """
    import optuna

    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.system_attrs.get("failed_trial") == trial.number:
            return t.number
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    system_attrs.pop("fixed_params", None)
    if max_retry is not None and max_retry < len(system_attrs["retry_history"]):
        return None
    user_attrs = {k: v for k, v in trial.user_attrs.items()
                  if k not in ("fail_reason", "interrupted", "retry_reason")}
    if reason:
        user_attrs["retry_reason"] = reason
    with quiet_optuna():
        number = len(trials)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params,
            distributions=trial.distributions, user_attrs=user_attrs,
            system_attrs=system_attrs))
    return number


class RequeueStaleTrial:
    """Heartbeat callback: re-queue a trial whose worker stopped beating (RDB storages).

    Args:
        max_retry: at most this many retries of one series.
    """

    def __init__(self, max_retry: int | None = 3) -> None:
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        requeue(study, trial, self.max_retry,
                reason=f"trial {trial.number}: its worker stopped sending heartbeats")


def fail_dead_local_trials(study, storage, max_retry: int | None = 3) -> list[int]:
    """Fail RUNNING trials whose worker ran on this host and is gone, giving them a
    ``fail_reason``, and re-queue them.

    Works on every storage (journal files have no heartbeats). Trials of other hosts are left to
    the heartbeat mechanism.

    Returns:
        The numbers of the trials failed here.
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if worker_alive(w) is not False:
            continue
        tid = trial_id(storage, study, t.number)
        reason = f"its worker (pid {w.get('pid')} on {w.get('host')}) died"
        try:
            storage.set_trial_user_attr(tid, "fail_reason", f"killed: {reason}; re-queued")
            ok = storage.set_trial_state_values(tid, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if ok:
            requeue(study, storage.get_trial(tid), max_retry, reason=f"trial {t.number}: {reason}")
            failed.append(t.number)
    return failed


#: fail reasons of trials that did not end for their own sake: they are run again
RETRIED_REASONS = ("killed", "interrupted", "input error")


def requeue_orphans(study, max_retry: int | None = 3) -> list[int]:
    """Re-queue FAIL trials that stopped for a reason outside the trial (a dead worker or rank,
    an interruption, an input error) and have no retry yet - e.g. when the process that was
    re-queueing them was itself stopped. Idempotent.

    Returns:
        The numbers of the trials re-queued.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {int(t.system_attrs["failed_trial"]) for t in trials if "failed_trial" in t.system_attrs}
    out = []
    for t in trials:
        reason = str(t.user_attrs.get("fail_reason", ""))
        if t.state == TrialState.FAIL and reason.startswith(RETRIED_REASONS) \
                and t.number not in retried:
            if requeue(study, t, max_retry, reason=f"trial {t.number}: {reason[:80]}") is not None:
                out.append(t.number)
    return out


def reap_dead_trials(study, storage, max_retry: int | None = 3) -> list[str]:
    """Fail and re-queue every trial whose worker is gone, in the order that keeps the reasons.

    1. Trials of dead workers on this host (:func:`fail_dead_local_trials`): their
       ``fail_reason`` is written before their state, so it is never lost.
    2. Trials whose heartbeat stopped (RDB storages; workers on other hosts or in other PID
       namespaces): Optuna fails them and :class:`RequeueStaleTrial` re-queues them. A finished
       trial takes no user attributes, so these carry no ``fail_reason``; their retry's
       ``retry_reason`` says why. Running step 2 first would send local trials down this path
       as soon as their grace period is over (a torchrun restart takes longer than that).
    3. Trials failed for an outside reason whose re-queue was cut short (:func:`requeue_orphans`).

    Returns:
        One message per trial handled, for the log.
    """
    import optuna

    msgs = [f"trial {n}: its worker is gone; re-queued to resume from its checkpoint"
            for n in fail_dead_local_trials(study, storage, max_retry)]
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
    msgs += [f"trial {n}: stopped before it was re-queued; re-queued now"
             for n in requeue_orphans(study, max_retry)]
    return msgs
