"""The hpo block: parameters, distributions and trial configs (nas.study.params), and
reference architectures (nas.study.references)."""

from __future__ import annotations

import pytest

from nas.errors import UsageError
from nas.study import params, references
from tests.conftest import setup_from

pytestmark = pytest.mark.usefixtures("one_thread")


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
    ({"params": {"search.alpha_steps": {"type": "float", "low": 1, "high": 3}}}, (),
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
    cfg = params.trial_config(s.cfg, {"search.penalty.lambda": 0.3, "search.alpha_lr": 0.01},
                           s.targets, seed=7)
    assert cfg.search.penalty.lam == 0.3 and cfg.search.alpha_lr == 0.01 and cfg.seed == 7
    assert cfg.hpo == {}
    # the config's own values, moved into the distributions (reference trials)
    assert params.base_values(s.cfg, s.specs, s.targets) == {"search.penalty.lambda": 0.01,
                                                              "search.alpha_lr": 0.05}


def test_reference_architectures(tmp_path):
    from nas.engine.network import build_backbone
    from search_spaces.space import SearchSpace

    s = setup_from(tmp_path, {"reference_trials": [
        "no_attention", "acla_everywhere", {"name": "one", "choices": {"b02/op": "acla"}}]})
    space = SearchSpace(s.cfg.space, build_backbone(s.cfg.space, s.cfg.task).config.num_block)
    refs = dict(s.references)
    assert set(refs["no_attention"].values()) == {"skip"}
    ev = refs["acla_everywhere"]
    assert all(ev[f"{p.name}/op"] == "acla" for p in space)
    assert all(ev[f"{p.name}/keys@{r}"] == 4 for p in space for r in p.refs)
    assert refs["one"]["b02/op"] == "acla" and refs["one"]["b00/op"] == "skip"
    with pytest.raises(UsageError, match="unknown label"):
        references.reference_arch({"name": "x", "choices": {"b09/op": "acla"}}, space)


