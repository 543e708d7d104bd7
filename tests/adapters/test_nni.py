"""The optional NNI adapter (extra ``acla-nas[nni]``): model space, export mapping, DARTS runs.

Tests that need NNI skip with a reason when it is not installed; the isolation test (``import
nas`` never imports NNI) and the pure mapping tests run everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nas.config import load_config
from nas.engine.flops import CostModel
from nas.errors import UsageError
from nas.restoration.task import Task
from search_spaces.space import SearchSpace, SpaceConfig
from tests.conftest import TINY_SETS

LR = (12, 16)  # small reference size: FLOPs measured on a real forward stay cheap
SKIP_REASON = "NNI not installed (optional extra: pip install 'acla-nas[nni]')"


@pytest.fixture
def nni():
    return pytest.importorskip("nni", reason=SKIP_REASON)


def small_space(**kw) -> SpaceConfig:
    # two points, two references each at b02 (nested key choices), two key counts: 8 ACLA
    # evaluations per DARTS forward instead of 52 for the full edsr-tiny space
    base = dict(backbone={"preset": "edsr-tiny"}, points=["b01", "b02"], ops=["skip", "acla"],
                max_refs=2, keys=[0, 2])
    base.update(kw)
    return SpaceConfig(**base)


def tiny_cfg(**over):
    sets = [*TINY_SETS, "space.points=[b01, b02]", "space.keys=[0, 2]",
            "search.supernet_steps=4", "search.largest_path_steps=0", "search.alpha_steps=4",
            "search.alpha_lr=0.05"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets)


# --------------------------------------------------------------------------- everywhere
def test_core_import_does_not_import_nni():
    code = textwrap.dedent("""
        import sys
        import nas, nas.cli, nas.engine.supernet, nas.engine.supernet_search, nas.adapters.nni
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("nni", "pytorch_lightning", "lightning"))
        print(bad[:5])
        sys.exit(1 if bad else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"imported at import time: {r.stdout}{r.stderr[-2000:]}"


def test_require_nni_without_nni_gives_install_hint(monkeypatch):
    from nas.adapters import nni as nni_adapter

    monkeypatch.setitem(sys.modules, "nni", None)  # `import nni` raises ImportError
    with pytest.raises(UsageError, match=r"acla-nas\[nni\]"):
        nni_adapter.require_nni()


def test_sample_to_arch_maps_names_and_validates():
    from nas.adapters.nni import sample_to_arch

    space = SearchSpace(small_space(keys=[0, 2, 4]), 4)
    arch = sample_to_arch(space, {"b01/op": "acla", "b01/keys@head": "4", "b01/keys@b00": "0",
                                  "b02/op": "skip", "b02/keys@b00": "2", "b02/keys@b01": "2"})
    # key counts become ints; key labels of a skipped point are dropped (canonical form)
    assert arch == {"b01/op": "acla", "b01/keys@head": 4, "b01/keys@b00": 0, "b02/op": "skip"}
    # ACLA reading no key is the identity: written as skip
    none = sample_to_arch(space, {"b01/op": "acla", "b01/keys@head": "0", "b01/keys@b00": "0",
                                  "b02/op": "skip"})
    assert none["b01/op"] == "skip"
    with pytest.raises(UsageError, match="unknown label 'b03/op'"):
        sample_to_arch(space, {"b03/op": "skip"})
    with pytest.raises(UsageError, match="not offered"):
        sample_to_arch(space, {"b01/op": "acla", "b01/keys@head": "9", "b01/keys@b00": "2",
                               "b02/op": "skip"})


def test_run_nni_rejects_bad_arguments(tmp_path):
    from nas.adapters.nni import run_nni

    cfg = tiny_cfg()
    with pytest.raises(UsageError, match="strategy"):
        run_nni("enas", cfg, tmp_path)
    with pytest.raises(UsageError, match="epochs"):
        run_nni("darts", cfg, tmp_path, steps=2, epochs=3)
    with pytest.raises(UsageError, match="device"):
        run_nni("darts", cfg, tmp_path, device="tpu")


# ------------------------------------------------------------------------------ with NNI
def test_model_space_labels_are_ours(nni):
    from nas.adapters.nni import to_model_space

    cfg = small_space(keys=[0, 2, 4])
    ms = to_model_space(cfg, Task("sr", scale=2))
    ours = SearchSpace(cfg, 4).choices()
    got = ms.simplify()
    assert list(got) == [c.label for c in ours]
    for c in ours:
        assert list(got[c.label].values) == [str(v) for v in c.values]
    y = ms(torch.rand(1, 3, 8, 8))  # dry run of NNI's default (first) candidates
    assert y.shape == (1, 3, 16, 16)


def test_collaborative_lcoa_is_rejected(nni):
    from nas.adapters.nni import to_model_space

    cfg = small_space(ops=["skip", "lcoa"], op_config={"lcoa": {"collaborative": True}})
    with pytest.raises(UsageError, match="collaborative"):
        to_model_space(cfg, Task("sr", scale=2))


def test_our_penalty_reaches_alpha_nni_probs_do_not(nni):
    """The caveat in docs/nni.md: NNI's export_probs() is detached; our E[F] is not."""
    from nni.nas.strategy import DARTS

    from nas.adapters.nni import arch_probs, mixed_layers, to_model_space

    task = Task("sr", scale=2)
    ms = DARTS().mutate_model(to_model_space(small_space(), task))
    layers = mixed_layers(ms)
    assert sorted(layers) == sorted(c.label for c in ms.space.choices())
    # NNI's penalty input: plain Python floats, so no gradient can flow to alpha through it
    for m in layers.values():
        for dist in m.export_probs({}).values():
            assert all(isinstance(v, float) for v in dist.values())
    e_flops = CostModel(ms.space, task, LR).expected(arch_probs(ms))
    e_flops.backward()
    for label, m in layers.items():
        g = m._arch_alpha.grad
        assert g is not None and g.abs().sum() > 0, label
        if label.endswith("/op"):  # more attention => more FLOPs
            assert g[list(m.names).index("acla")] > 0 > g[list(m.names).index("skip")]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,penalty", [("darts", False), ("gumbel", True)])
def test_run_nni_yields_buildable_archspec(nni, tmp_path, strategy, penalty):
    from nas import build_model
    from nas.adapters.nni import run_nni
    from nas.engine.archspec import load_archspec
    from nas.engine.flops import measure_flops

    cfg = tiny_cfg(**{"search.penalty.lambda": 1.0})
    spec = run_nni(strategy, cfg, tmp_path, epochs=2, penalty=penalty)
    assert spec.provenance["strategy"] == {"darts": "nni-darts", "gumbel": "nni-gumbel-darts"}[strategy]
    assert spec.provenance["penalty"] == ("linear" if penalty else "none")
    assert spec.provenance["steps"] == 8 and spec.provenance["nni"] == nni.__version__
    loaded = load_archspec(tmp_path / "arch.json")
    assert loaded.choices == spec.choices
    assert set(spec.probs) == {c.label for c in spec.search_space().choices()}
    net = build_model(loaded)
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    exact = CostModel(loaded.search_space(), loaded.task_obj(), LR).exact(loaded.choices)
    measured = measure_flops(net, torch.rand(1, 3, *LR))
    assert spec.cost["flops"] == exact == measured
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["psnr_db"] > 10 and result["strategy"] == spec.provenance["strategy"]
    # NNI's manifest and logs stay in the run directory
    assert (tmp_path / "nni" / ".experiment").is_file()
    metrics = (tmp_path / "nni" / "lightning" / "metrics.csv").read_text().splitlines()[0]
    assert "prob/b01/op/acla" in metrics and ("e_gflops" in metrics) == penalty
