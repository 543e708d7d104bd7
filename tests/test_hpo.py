"""The Optuna outer loop (nas.hpo): config parsing, storages, trials, failures, retry + resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas import hpo
from nas.config import load_config
from nas.errors import UsageError
from tests.study_fixtures import TINY_STUDY as TINY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(tmp_path: Path, hpo_block: dict | None = None, **top) -> Path:
    d = {**TINY, **top}
    d["hpo"] = {**TINY["hpo"], **(hpo_block or {})}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def setup_from(tmp_path: Path, hpo_block: dict | None = None, overrides=(), **top):
    path = write_config(tmp_path, hpo_block, **top)
    return hpo.prepare(load_config(path, overrides), str(path))


def open_tmp_study(tmp_path: Path, setup, name: str = "tiny", spec: str | None = None):
    storage = hpo.resolve_storage(spec, tmp_path / "out", heartbeat_interval=1, grace_period=2)
    return hpo.open_study(setup, storage, name)


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("block, overrides, message", [
    ({"trails": 3}, (), r"hpo\.trails: unknown key \(did you mean 'trials'\?\)"),
    ({"trials": "many"}, (), r"hpo\.trials: expected an integer"),
    ({"sampler": "nsga"}, (), r"hpo\.sampler: .*did you mean 'nsga2'"),
    ({"params": {}}, (), r"hpo\.params: empty search space"),
    ({"params": {"search.penalty.lamda": {"type": "float", "low": 0.1, "high": 1}}}, (),
     r"unknown config field 'search.penalty.lamda' \(did you mean 'search.penalty.lambda'\?\)"),
    ({"params": {"search.alpha_lr": {"type": "float", "lo": 0.1, "high": 1}}}, (),
     r"hpo\.params\.search\.alpha_lr\.lo: unknown key \(did you mean 'low'\?\)"),
    ({"params": {"search.alpha_lr": {"type": "float", "low": 1.0, "high": 0.1}}}, (),
     r"low \(1.0\) must be <= high"),
    ({"params": {"search.penalty.kind": {"type": "categorical", "choices": []}}}, (),
     r"choices: empty search space"),
    ({"params": {"search.warmup_steps": {"type": "float", "low": 1, "high": 3}}}, (),
     r"the field is an integer; use type: int"),
    ({"params": {"search.penalty.kind": {"type": "categorical", "choices": ["linear", "hinge"]}}},
     (), r"hpo\.params\.search\.penalty\.kind='hinge'.*target_gflops: required"),
    ({"params": {"search.tau.start": {"type": "float", "low": 0.0, "high": 1.0}}}, (),
     r"hpo\.params\.search\.tau\.start=0\.0.*start and end must be > 0"),
    ({"params": {"hpo.trials": {"type": "int", "low": 1, "high": 2}}}, (), r"hpo block itself"),
    ({"reference_trials": ["acla_everywere"]}, (), r"did you mean 'acla_everywhere'"),
    ({"time_budget_s": -1}, (), r"hpo\.time_budget_s: must be > 0"),
    ({}, ("space.ops=[skip]",), r"empty search space"),
])
def test_bad_hpo_config(tmp_path, block, overrides, message):
    with pytest.raises(UsageError, match=message) as e:
        setup_from(tmp_path, block, overrides)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "study.yaml")) and "\n" not in msg


def test_params_resolve_aliases_and_set_overrides(tmp_path):
    s = setup_from(tmp_path, overrides=["hpo.params.search.penalty.lambda.high=5",
                                        "hpo.trials=4"])
    assert s.targets["search.penalty.lambda"] == "search.penalty.lam"
    assert s.specs["search.penalty.lambda"].high == 5 and s.specs["search.penalty.lambda"].log
    assert s.hpo.trials == 4
    cfg = hpo.trial_config(s.cfg, {"search.penalty.lambda": 0.3, "search.alpha_lr": 0.01},
                           s.targets, seed=7)
    assert cfg.search.penalty.lam == 0.3 and cfg.search.alpha_lr == 0.01 and cfg.seed == 7
    assert cfg.hpo == {}
    # the config's own values, moved into the distributions (reference trials)
    assert hpo.base_values(s) == {"search.penalty.lambda": 0.01, "search.alpha_lr": 3e-3}


def test_reference_architectures(tmp_path):
    from nas.network import build_backbone
    from search_spaces.space import SearchSpace

    s = setup_from(tmp_path, {"reference_trials": [
        "no_attention", "acla_everywhere", {"name": "one", "choices": {"b02/op": "acla"}}]})
    space = SearchSpace(s.cfg.space, build_backbone(s.cfg.space, s.cfg.task_obj()).config.num_block)
    refs = dict(s.references)
    assert set(refs["no_attention"].values()) == {"skip"}
    ev = refs["acla_everywhere"]
    assert all(ev[f"{p.name}/op"] == "acla" for p in space)
    assert all(ev[f"{p.name}/keys@{r}"] == 4 for p in space for r in p.refs)
    assert refs["one"]["b02/op"] == "acla" and refs["one"]["b00/op"] == "skip"
    with pytest.raises(UsageError, match="unknown label"):
        hpo.reference_arch({"name": "x", "choices": {"b09/op": "acla"}}, space)


# ----------------------------------------------------------------------------------- storages
def test_storage_resolution(tmp_path):
    assert hpo.storage_kind(None) == "sqlite"
    assert hpo.storage_kind("journal:x") == hpo.storage_kind("a/b.log") == "journal"
    assert hpo.storage_kind("postgresql+psycopg2://u@h/db") == "rdb"
    with pytest.raises(UsageError, match="expected sqlite"):
        hpo.storage_kind("study.db")
    st = hpo.resolve_storage(None, tmp_path / "o", heartbeat_interval=5)
    assert isinstance(st, optuna.storages.RDBStorage) and (tmp_path / "o" / "study.db").is_file()
    assert hpo.heartbeat_enabled(st)
    st = hpo.resolve_storage(str(tmp_path / "j" / "journal.log"))
    assert isinstance(st, optuna.storages.JournalStorage)
    with pytest.raises(UsageError, match="no such study database"):
        hpo.resolve_storage(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(UsageError, match="no such journal file"):
        hpo.resolve_storage(f"journal:{tmp_path / 'missing.log'}", create=False)


def test_unreachable_storage_is_a_usage_error():
    # nothing listens on port 1; without psycopg2 the message names the missing driver instead
    with pytest.raises(UsageError, match=r"--storage postgresql\+psycopg2://u:\*\*\*@127\.0\.0\.1:1/x"):
        hpo.resolve_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/x")
    with pytest.raises(UsageError, match="--storage nosuchdb://x"):
        hpo.resolve_storage("nosuchdb://x")


# ------------------------------------------------------------------------------------- trials
@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_study_runs_records_and_resumes(tmp_path, journal):
    s = setup_from(tmp_path, {"reference_trials": ["no_attention"]})
    spec = f"journal:{tmp_path / 'out' / 'journal.log'}" if journal else None
    study, created = open_tmp_study(tmp_path, s, spec=spec)
    assert created
    counts = hpo.run_study(s, study, tmp_path / "out")
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
        assert (Path(ua["run_dir"]) / "supernet.pt").is_file()
    arch = yaml.safe_load(Path(ref.user_attrs["arch_path"]).read_text())
    assert set(arch["choices"].values()) == {"skip"}
    assert arch["provenance"]["reference"] == "no_attention" and arch["provenance"]["trial"] == 0
    assert all("reference" not in t.user_attrs for t in study.best_trials)
    # resume: a larger budget adds trials and keeps the old ones (no reference re-enqueued)
    s2 = setup_from(tmp_path, {"reference_trials": ["no_attention"], "trials": 3})
    study2, created2 = open_tmp_study(tmp_path, s2, spec=spec)
    assert not created2
    hpo.run_study(s2, study2, tmp_path / "out")
    after = study2.get_trials()
    assert len(after) == 4 and after[3].state == TrialState.COMPLETE
    assert [t.values for t in after[:3]] == [t.values for t in trials]


def test_divergence_fails_and_time_budget_prunes(tmp_path):
    s = setup_from(tmp_path, {"trials": 3, "params": {
        "search.lr": {"type": "categorical", "choices": [1.0e12, 2.0e-4, 3.0e-4]}}})
    study, _ = open_tmp_study(tmp_path, s)
    study.enqueue_trial({"search.lr": 1.0e12})
    study.enqueue_trial({"search.lr": 2.0e-4})
    hpo.run_study(s, study, tmp_path / "out", max_trials_here=2)
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_reason"].startswith("diverged:")
    assert t1.state == TrialState.COMPLETE
    # a time budget that every trial exceeds: pruned with the reason, the study goes on
    s.hpo.time_budget_s = 1e-6
    study.enqueue_trial({"search.lr": 3.0e-4})
    counts = hpo.run_study(s, study, tmp_path / "out")
    t2 = study.get_trials()[2]
    assert t2.state == TrialState.PRUNED and "time budget" in t2.user_attrs["fail_reason"]
    assert counts["done"] == 3


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_dead_worker_trial_is_retried_and_resumes_from_checkpoint(tmp_path):
    from nas.search import SearchRun

    s = setup_from(tmp_path, {"trials": 1})
    study, _ = open_tmp_study(tmp_path, s)
    # a worker started trial 0, checkpointed at step 4, and died
    trial = study.ask()
    values = {n: hpo.suggest(trial, n, spec) for n, spec in s.specs.items()}
    run_dir = tmp_path / "out" / "trials" / "0"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", {**hpo.worker_id(), "pid": _dead_pid()})
    cfg = hpo.trial_config(s.cfg, values, s.targets, seed=0)
    assert SearchRun(cfg, run_dir, progress=False).run(stop_after=4) is None
    assert (run_dir / "supernet.pt").is_file()
    counts = hpo.run_study(s, study, tmp_path / "out")
    assert counts["done"] == 1
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t1.state == TrialState.COMPLETE
    assert t1.params == t0.params and t1.system_attrs["retry_history"] == [0]
    assert t1.user_attrs["retry_of"] == 0 and t1.user_attrs["run_dir"] == str(run_dir)
    assert t1.user_attrs["resumed_from_step"] == 4


def test_interrupted_trial_is_requeued(tmp_path, monkeypatch):
    from nas import search

    s = setup_from(tmp_path, {"trials": 1})
    study, _ = open_tmp_study(tmp_path, s)
    real_run = search.SearchRun.run

    def interrupted(self, stop_after=None, on_step=None):
        real_run(self, stop_after=2, on_step=on_step)
        raise KeyboardInterrupt

    monkeypatch.setattr(search.SearchRun, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hpo.run_study(s, study, tmp_path / "out")
    monkeypatch.setattr(search.SearchRun, "run", real_run)
    hpo.run_study(s, study, tmp_path / "out")
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t0.user_attrs["interrupted"] is True
    assert t1.state == TrialState.COMPLETE and t1.user_attrs["resumed_from_step"] == 2


def test_worker_liveness():
    me = hpo.worker_id()
    assert hpo.worker_alive(me) is True
    assert hpo.worker_alive({**me, "pid": _dead_pid()}) is False
    assert hpo.worker_alive({**me, "host": "elsewhere"}) is None
    assert hpo.worker_alive({**me, "ns": "pid:[1]"}) is None  # another container


def test_joining_with_another_config_is_refused(tmp_path):
    s = setup_from(tmp_path)
    open_tmp_study(tmp_path, s)
    other = setup_from(tmp_path, overrides=["search.steps=7"])
    with pytest.raises(UsageError, match=r"different config \(first difference: search\.steps"):
        open_tmp_study(tmp_path, other)
    # the hpo budget may change
    open_tmp_study(tmp_path, setup_from(tmp_path, {"trials": 5}))


def test_duplicate_hyperparameters_reuse_the_result(tmp_path):
    s = setup_from(tmp_path, {"trials": 2})
    study, _ = open_tmp_study(tmp_path, s)
    same = {"search.penalty.lambda": 0.1, "search.alpha_lr": 0.01}
    study.enqueue_trial(same)
    study.enqueue_trial(same)
    hpo.run_study(s, study, tmp_path / "out")
    t0, t1 = study.get_trials()
    assert t1.values == t0.values and t1.user_attrs["duplicate_of"] == 0
    assert t1.user_attrs["arch_path"] == t0.user_attrs["arch_path"]
    assert not (tmp_path / "out" / "trials" / "1").exists()
