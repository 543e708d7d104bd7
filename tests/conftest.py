"""Shared fixtures and helpers of the test suite.

* the real-image data root (``../shared/data`` or ``$ACLA_NAS_DATA``) and an isolated cache;
* tiny configs: :data:`TINY_STUDY` (edsr-tiny, 6-step searches), :func:`tiny_cfg`,
  :func:`write_study_config`, :func:`all_ops_space`, :func:`spec_dict`;
* worker processes of ``acla-nas search`` for the crash and concurrency tests (:func:`spawn`,
  :func:`wait`, :func:`kill_and_restart`, ...).

Test modules import the helpers from ``tests.conftest``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

from nas.config import load_config
from search_spaces.space import SearchSpace, SpaceConfig

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where the real images are looked for: ``$ACLA_NAS_DATA``, else ``../shared/data`` beside
    the checkout (whether or not they are there)."""
    env = os.environ.get("ACLA_NAS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def data_root() -> Path | None:
    """:func:`data_dir` when it holds the benchmark sets (Set5 at least), else ``None``."""
    root = data_dir()
    return root if (root / "benchmarks" / "Set5" / "HR").is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real benchmark images not found: set ACLA_NAS_DATA or put shared/data beside "
                    "the checkout")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACLA_NAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from threads; one thread keeps timings stable on shared CPUs
    (and two worker processes from starving each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------- tiny configs
LR = (12, 14)  # small reference size so the measured FLOPs come from a real forward

#: the tiny study config shared by the Optuna tests (edsr-tiny, 6 + 4-step searches,
#: 4-step scoring runs)
TINY_STUDY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sr", "scale": 2},
    "data": {"images": ["astronaut", "chelsea", "coffee", "camera", "rocket"],
             "val_fraction": 0.2, "score_fraction": 0.2, "patch_size": 24, "batch_size": 2},
    "space": {"backbone": {"preset": "edsr-tiny"}, "keys": [0, 2, 4]},
    "search": {"supernet_steps": 6, "largest_path_steps": 2, "alpha_steps": 4, "lr_size": [12, 16],
               "checkpoint_every": 2, "log_every": 2},
    "score": {"steps": 4, "patch_size": 24, "batch_size": 2, "seeds": 1, "noise_seeds": 2,
              "max_eval_side": 48},
    "hpo": {"trials": 2, "population_size": 2, "reference_trials": ["no_attention"],
            "params": {"search.penalty.lambda": {"type": "float", "low": 0.01, "high": 2.0,
                                                 "log": True},
                       "search.alpha_lr": {"type": "float", "low": 1e-3, "high": 1e-1,
                                           "log": True}}},
}


def write_study_config(path: Path, **changes) -> Path:
    """Write :data:`TINY_STUDY` with ``a__b=value`` changes (``__`` separates levels)."""
    d = json.loads(json.dumps(TINY_STUDY))
    for k, v in changes.items():
        cur = d
        *head, last = k.split("__")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def all_ops_space(**kw) -> SpaceConfig:
    return SpaceConfig(
        backbone={"preset": "edsr-tiny"}, ops=["skip", "acla", "rela", "lcoa", "nla"],
        max_refs=2, keys=[0, 1, 2, 4],
        op_config={"lcoa": {"collaborative": True, "window": 16, "n_clusters": 4},
                   "rela": {"heads": 2}}, **kw)


def random_arch(space: SearchSpace, rng: random.Random) -> dict:
    return {c.label: rng.choice(c.values) for c in space.choices()}


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


#: ``--set`` overrides of a tiny single-search config (edsr-tiny, 6 + 4 steps, tiny scoring)
TINY_SETS = ["space.backbone={preset: edsr-tiny}",
             "data.images=[astronaut,chelsea,coffee,camera,rocket]", "data.patch_size=24",
             "data.batch_size=2", "data.val_fraction=0.2", "data.score_fraction=0.2",
             "search.supernet_steps=6", "search.largest_path_steps=2", "search.alpha_steps=4",
             "search.log_every=1", "search.checkpoint_every=2", "search.lr_size=[12,16]",
             "score.steps=4", "score.patch_size=24", "score.batch_size=2", "score.seeds=1",
             "score.max_eval_side=48", "retrain.steps=2", "retrain.val_every=1",
             "retrain.checkpoint_every=1"]


def tiny_cfg(**over):
    """A tiny single-search config (:data:`TINY_SETS`) with ``field=value`` overrides."""
    return load_config(None, [*TINY_SETS, *(f"{k}={v}" for k, v in over.items())])


def spec_dict():
    return {"format_version": 1, "task": {"name": "sr", "scale": 2},
            "backbone": {"type": "edsr", "num_feat": 16, "num_block": 4, "res_scale": 1.0},
            "space": {"ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4, 9]},
            "choices": {"b00/op": "skip", "b01/op": "acla", "b01/keys@head": 2,
                        "b01/keys@b00": 9, "b02/op": "skip", "b03/op": "skip"}}


def setup_from(tmp_path: Path, hpo_block: dict | None = None, overrides=(), **top):
    """A prepared tiny study set-up (no reference trials unless ``hpo_block`` names some)."""
    from nas.study.run import prepare_study

    changes = {f"hpo__{k}": v for k, v in {"reference_trials": [], **(hpo_block or {})}.items()}
    changes.update(top)
    path = write_study_config(tmp_path / "study.yaml", **changes)
    return prepare_study(load_config(path, overrides), str(path))


def open_tmp_study(tmp_path: Path, setup, name: str = "tiny", spec: str | None = None):
    """``(study, storage, created)`` of a study in ``tmp_path/out``."""
    from nas.study.run import open_study
    from nas.study.storage import parse_storage

    return open_study(setup, parse_storage(spec, tmp_path / "out"), name, tmp_path / "out")


# ----------------------------------------------------------------------------- worker processes
def dead_pid() -> int:
    """The PID of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


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
    cfg = write_study_config(tmp_path / "k.yaml", search__alpha_steps=40, search__checkpoint_every=5,
                             hpo__trials=3, hpo__reference_trials=[],
                       hpo__heartbeat_interval=1, hpo__grace_period=2)
    out = tmp_path / "out"
    args = ["-c", str(cfg), "--out", str(out), *storage_args]
    p = spawn(args, tmp_path, "first.log", **(env_first or {}))
    wait_for(lambda: (out / "trials" / "1" / "search.pt").is_file() or p.poll() is not None,
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


