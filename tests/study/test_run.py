"""Running a study (nas.study.run, nas.study.objective, nas.study.workers): trials, failures,
retry + resume, duplicates, joining."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from nas.errors import UsageError
from nas.study import params, workers
from nas.study.run import run_study
from tests.conftest import dead_pid, open_tmp_study, setup_from

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- trials
@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_study_runs_records_and_resumes(tmp_path, journal):
    s = setup_from(tmp_path, {"reference_trials": ["no_attention"]})
    spec = f"journal:{tmp_path / 'out' / 'journal.log'}" if journal else None
    study, st, created = open_tmp_study(tmp_path, s, spec=spec)
    assert created
    counts = run_study(s, study, st, tmp_path / "out")
    assert counts["done"] == 2 and counts["ref_done"] == 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert study.metric_names == ["psnr_db", "gflops"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    ref = trials[0]
    assert ref.user_attrs["reference"] == "no_attention" and ref.constraints == {"reference": 1.0}
    for t in trials:
        ua = t.user_attrs
        assert Path(ua["run_dir"]) == tmp_path / "out" / "trials" / str(t.number)
        assert Path(ua["arch_path"]).is_file() and ua["seed"] == 0 and ua["params"] > 0
        assert ua["flops"] == pytest.approx(t.values[1] * 1e9)
        if "reference" in ua:  # known architectures are only scored
            assert not (Path(ua["run_dir"]) / "search.pt").exists()
        else:
            assert (Path(ua["run_dir"]) / "search.pt").is_file()
        assert ua["score_seeds"] == [0] and len(ua["arch_key"]) == 16
    arch = yaml.safe_load(Path(ref.user_attrs["arch_path"]).read_text())
    assert set(arch["choices"].values()) == {"skip"}
    assert arch["provenance"]["reference"] == "no_attention" and arch["provenance"]["trial"] == 0
    assert all("reference" not in t.user_attrs for t in study.best_trials)
    # resume: a larger budget adds trials and keeps the old ones (no reference re-enqueued)
    s2 = setup_from(tmp_path, {"reference_trials": ["no_attention"], "trials": 3})
    study2, st2, created2 = open_tmp_study(tmp_path, s2, spec=spec)
    assert not created2
    run_study(s2, study2, st2, tmp_path / "out")
    after = study2.get_trials()
    assert len(after) == 4 and after[3].state == TrialState.COMPLETE
    assert [t.values for t in after[:3]] == [t.values for t in trials]


def test_divergence_fails_and_time_budget_prunes(tmp_path):
    s = setup_from(tmp_path, {"trials": 3, "params": {
        "search.lr": {"type": "categorical", "choices": [1.0e12, 2.0e-4, 3.0e-4]}}})
    study, st, _ = open_tmp_study(tmp_path, s)
    study.enqueue_trial({"search.lr": 1.0e12})
    study.enqueue_trial({"search.lr": 2.0e-4})
    run_study(s, study, st, tmp_path / "out", max_trials_here=2)
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_reason"].startswith("diverged:")
    assert t1.state == TrialState.COMPLETE
    # a time budget that every trial exceeds: pruned with the reason, the study goes on
    s.hpo.time_budget_s = 1e-6
    study.enqueue_trial({"search.lr": 3.0e-4})
    counts = run_study(s, study, st, tmp_path / "out")
    t2 = study.get_trials()[2]
    assert t2.state == TrialState.PRUNED and "time budget" in t2.user_attrs["fail_reason"]
    assert counts["done"] == 3


def test_dead_worker_trial_is_retried_and_resumes_from_checkpoint(tmp_path):
    from nas.engine.supernet_search import SupernetSearch

    s = setup_from(tmp_path, {"trials": 1})
    study, st, _ = open_tmp_study(tmp_path, s)
    # a worker started trial 0, checkpointed at step 4, and died
    trial = study.ask()
    values = {n: params.suggest(trial, n, spec) for n, spec in s.specs.items()}
    run_dir = tmp_path / "out" / "trials" / "0"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", {**workers.worker_id(), "pid": dead_pid()})
    cfg = params.trial_config(s.cfg, values, s.targets, seed=0)
    from nas.engine.supernet_search import supernet_key

    shared = tmp_path / "out" / "supernets" / supernet_key(cfg)
    # 6 supernet steps, then alpha steps: killed after alpha step 2 (its checkpoint)
    assert SupernetSearch(cfg, run_dir, progress=False, supernet_dir=shared).run(stop_after=8) is None
    assert (run_dir / "search.pt").is_file()
    counts = run_study(s, study, st, tmp_path / "out")
    assert counts["done"] == 1
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t1.state == TrialState.COMPLETE
    assert t1.params == t0.params and t1.system_attrs["retry_history"] == [0]
    assert t1.user_attrs["retry_of"] == 0 and t1.user_attrs["run_dir"] == str(run_dir)
    assert t1.user_attrs["resumed_from_step"] == 2


def test_interrupted_trial_is_requeued(tmp_path, monkeypatch):
    from nas.engine import supernet_search as search

    s = setup_from(tmp_path, {"trials": 1})
    study, st, _ = open_tmp_study(tmp_path, s)
    real_run = search.SupernetSearch.run

    def interrupted(self, stop_after=None, on_step=None):
        real_run(self, stop_after=2, on_step=on_step)
        raise KeyboardInterrupt

    monkeypatch.setattr(search.SupernetSearch, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(s, study, st, tmp_path / "out")
    monkeypatch.setattr(search.SupernetSearch, "run", real_run)
    run_study(s, study, st, tmp_path / "out")
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t0.user_attrs["interrupted"] is True
    assert t1.state == TrialState.COMPLETE and t1.user_attrs["resumed_from_step"] == 2


def test_joining_with_another_config_is_refused(tmp_path):
    s = setup_from(tmp_path, {"trials": 1})
    study, st, _ = open_tmp_study(tmp_path, s)
    other = setup_from(tmp_path, overrides=["search.alpha_steps=7"])
    # nothing computed yet: the other config replaces the empty study
    _, _, created = open_tmp_study(tmp_path, other)
    assert created
    study, st, _ = open_tmp_study(tmp_path, s)  # and back (still empty)
    run_study(s, study, st, tmp_path / "out")
    with pytest.raises(UsageError, match=r"different config .*first difference: search\.alpha_steps"):
        open_tmp_study(tmp_path, other)
    # the hpo budget may change
    open_tmp_study(tmp_path, setup_from(tmp_path, {"trials": 5}))


def test_duplicate_hyperparameters_reuse_the_result(tmp_path):
    s = setup_from(tmp_path, {"trials": 2})
    study, st, _ = open_tmp_study(tmp_path, s)
    same = {"search.penalty.lambda": 0.1, "search.alpha_lr": 0.01}
    study.enqueue_trial(same)
    study.enqueue_trial(same)
    counts = run_study(s, study, st, tmp_path / "out")
    t0, t1, t2 = study.get_trials()
    assert t1.values == t0.values and t1.user_attrs["duplicate_of"] == 0
    assert t1.user_attrs["arch_path"] == t0.user_attrs["arch_path"]
    assert not (tmp_path / "out" / "trials" / "1").exists()
    # the duplicate did not use up a trial of the budget: a third, fresh trial ran
    assert "duplicate_of" not in t2.user_attrs and t2.params != same
    assert counts["done"] == 2 and counts["duplicates"] == 1


def test_interrupted_study_samples_what_the_uninterrupted_one_would(tmp_path):
    """Sampler seeding: a study stopped after two trials and resumed by a new process (new
    sampler objects) proposes the same hyperparameters, trial by trial, as one run straight."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa = setup_from(a, {"trials": 4, "sampler": "tpe", "startup_trials": 2})
    study_a, st_a, _ = open_tmp_study(a, sa)
    run_study(sa, study_a, st_a, a / "out")
    sb = setup_from(b, {"trials": 4, "sampler": "tpe", "startup_trials": 2})
    study_b, st_b, _ = open_tmp_study(b, sb)
    run_study(sb, study_b, st_b, b / "out", max_trials_here=2)
    assert len(study_b.get_trials()) == 2
    sb2 = setup_from(b, {"trials": 4, "sampler": "tpe", "startup_trials": 2})
    study_b2, st_b2, created = open_tmp_study(b, sb2)
    assert not created
    run_study(sb2, study_b2, st_b2, b / "out")
    pa = [t.params for t in study_a.get_trials()]
    pb = [t.params for t in study_b2.get_trials()]
    assert len(pa) == 4 and pa == pb


def test_killed_trials_carry_a_reason_and_references_count_once(tmp_path):
    s = setup_from(tmp_path, {"trials": 1, "reference_trials": ["no_attention"]})
    study, st, _ = open_tmp_study(tmp_path, s)
    # the reference trial was started by a worker that died
    trial = study.ask()
    assert trial.user_attrs["reference"] == "no_attention"
    trial.set_user_attr("worker", {**workers.worker_id(), "pid": dead_pid()})
    run_study(s, study, st, tmp_path / "out")
    t0 = study.get_trials()[0]
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_reason"].startswith("killed: ")
    from nas.study.summary import summarize_study

    summary = summarize_study(study, "test", base=tmp_path / "out")
    assert "1 reference architectures" in summary.header()[0]
    row = summary.trials.iloc[0]
    assert row["fail_reason"].startswith("killed")
    # the study's user attributes stay short (readable in `optuna studies`)
    assert len(str(study.user_attrs)) < 600, study.user_attrs


def test_input_error_in_a_trial_is_recorded_and_does_not_use_up_the_budget(tmp_path, monkeypatch):
    from nas.engine import supernet_search as search
    from nas.errors import UsageError as UE

    s = setup_from(tmp_path, {"trials": 1})
    study, st, _ = open_tmp_study(tmp_path, s)
    real = search.SupernetSearch.run

    def broken(self, stop_after=None, on_step=None):
        raise UE("imgs/x.png: cannot decode image")

    monkeypatch.setattr(search.SupernetSearch, "run", broken)
    with pytest.raises(UE):
        run_study(s, study, st, tmp_path / "out")
    monkeypatch.setattr(search.SupernetSearch, "run", real)
    counts = run_study(s, study, st, tmp_path / "out")
    t0, t1 = study.get_trials()
    assert t0.user_attrs["fail_reason"].startswith("input error: imgs/x.png")
    assert t1.state == TrialState.COMPLETE and counts["done"] == 1
