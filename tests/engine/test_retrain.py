"""retrain + eval --arch/--weights on a tiny searched architecture (issue 4)."""

from __future__ import annotations

import json

import pytest
import torch

from nas.cli import main
from nas.config import load_config
from nas.engine.archspec import ArchSpec
from nas.engine.retrain import retrain
from tests.conftest import TINY_SETS

SPEC = {"format_version": 1, "task": {"name": "sr", "scale": 2},
        "backbone": {"type": "edsr", "num_feat": 16, "num_block": 4, "res_scale": 1.0},
        "space": {"ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4, 9]},
        "choices": {"b00/op": "skip", "b01/op": "acla", "b01/keys@head": 2, "b01/keys@b00": 4,
                    "b02/op": "skip", "b03/op": "skip"}}


def cfg(steps=4, **over):
    sets = ["data.images=[astronaut,coffee]", "data.score_fraction=0", "data.patch_size=24",
            "data.batch_size=2",
            f"retrain.steps={steps}", "retrain.val_every=2", "retrain.checkpoint_every=2",
            "retrain.eval_sets=[Set5]"]
    return load_config(None, sets + [f"{k}={v}" for k, v in over.items()])


def test_retrain_resume_and_eval(tmp_path, shared_data):
    spec = ArchSpec.from_dict(SPEC)
    full = retrain(spec, cfg(4), tmp_path / "full", data_root=shared_data, progress=False)
    assert full["steps"] == 4 and full["eval"][0]["set"] == "Set5"
    # killed after step 3 (last checkpoint at step 2), then restarted: same final weights
    cut = retrain(spec, cfg(4), tmp_path / "cut", data_root=shared_data, progress=False,
                  stop_after=3)
    assert cut["stopped"] and cut["steps"] == 3
    res = retrain(spec, cfg(4), tmp_path / "cut", data_root=shared_data, progress=False)
    assert res["steps"] == 4 and res["eval"] == full["eval"]
    w_full = torch.load(tmp_path / "full" / "model_last.pt", weights_only=True)["params"]
    w_cut = torch.load(tmp_path / "cut" / "model_last.pt", weights_only=True)["params"]
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    e_full = torch.load(tmp_path / "full" / "model_last.pt", weights_only=True)["params_ema"]
    e_cut = torch.load(tmp_path / "cut" / "model_last.pt", weights_only=True)["params_ema"]
    assert all(torch.equal(e_full[k], e_cut[k]) for k in e_full)
    assert {"params", "params_ema"} <= set(torch.load(tmp_path / "full" / "model_best.pt",
                                                      weights_only=True))
    assert full["eval_ema"][0]["set"] == "Set5"
    assert (tmp_path / "full" / "eval_summary_ema.csv").is_file()
    with pytest.raises(Exception, match="another config"):
        retrain(spec, cfg(6), tmp_path / "cut", data_root=None, progress=False)
    lines = (tmp_path / "full" / "val.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]


def test_eval_with_arch_and_weights(tmp_path, shared_data, capsys):
    spec = ArchSpec.from_dict(SPEC)
    retrain(spec, cfg(2, **{"retrain.eval_sets": "[]"}), tmp_path, data_root=None,
            progress=False)
    rc = main(["eval", "--arch", str(tmp_path / "arch.json"), "--weights",
               str(tmp_path / "model_best.pt"), "--sets", "Set5", "--data-root",
               str(shared_data), "-f", "json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["images"] == 5 and 5 < row["psnr"] < 40
    # weights of another architecture do not fit: one-line error, exit 2
    other = dict(SPEC, choices={**SPEC["choices"], "b02/op": "acla", "b02/keys@b00": 2,
                                "b02/keys@b01": 2})
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc = main(["eval", "--arch", str(tmp_path / "other.json"), "--weights",
               str(tmp_path / "model_best.pt"), "--sets", "Set5", "--data-root",
               str(shared_data)])
    err = capsys.readouterr().err
    assert rc == 2 and "weights do not fit" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("sets,needle", [
    (["search.alpha_stpes=3"], "search.alpha_stpes: unknown key (did you mean 'alpha_steps'?)"),
    (["search.alpha_steps=abc"], "search.alpha_steps: expected an integer"),
    (["search.steps=300"], "search.steps: replaced by search.supernet_steps and "
                           "search.alpha_steps in acla-nas 0.2"),
    (["space.ops=[skip]"], "empty search space"),
    (["space.ops=[skip, aclaa]"], "unknown operator 'aclaa' (did you mean 'acla'?)"),
    (["task.scale=5"], "scale"),
])
def test_supernet_bad_config_one_line(tmp_path, capsys, sets, needle):
    args = ["supernet", "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    p = tmp_path / "c.yaml"
    p.write_text("name: t\n")
    rc = main(args + ["-c", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_supernet_command_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["supernet", "-c", "experiments/search/sr_x2_small.yaml", "--out", str(out)]
    for s in TINY_SETS:
        args += ["--set", s]
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "derived architecture" in printed and "GFLOPs" in printed and "score:" in printed
    spec = json.loads((out / "arch.json").read_text())
    assert spec["format_version"] == 1 and spec["cost"]["lr_size"] == [12, 16]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and "probs" in rows[-1] and "e_gflops" in rows[-1]
    assert (out / "config.yaml").exists() and (out / "supernet" / "supernet.pt").exists()
    result = json.loads((out / "result.json").read_text())
    assert set(result["scores"]) == {"0"} and result["psnr_db"] == result["scores"]["0"]


def test_retrain_inherits_supernet_weights(tmp_path):
    from nas.engine.archspec import build_model
    from nas.engine.retrain import inherit_from_supernet
    from nas.engine.supernet_search import SupernetSearch

    sc = load_config(None, [*TINY_SETS, "space.ops=[skip, acla]"])
    SupernetSearch(sc, tmp_path / "sn", progress=False).run()
    ckpt = tmp_path / "sn" / "supernet" / "supernet.pt"
    spec = ArchSpec.from_dict(SPEC)
    model = build_model(spec)
    inherit_from_supernet(model, spec, ckpt)
    from nas.engine.supernet import Supernet

    sn = Supernet(sc.space, sc.task)
    sn.net.load_state_dict(torch.load(ckpt, weights_only=False)["model"])
    sn_state = sn.net.state_dict()
    assert torch.equal(model.backbone.head.weight, sn_state["backbone.head.weight"])
    sliced = sn.net.points["b01"].ops["acla"].sliced_state_dict([2, 4])
    for k, v in model.points["b01"].ops["acla"].state_dict().items():
        assert torch.equal(v, sliced[k]), k


def test_ema_weights_are_the_hand_computed_average(tmp_path):
    """params_ema after 3 steps = the exponential moving average of the weights after steps 1-3
    (taken from the same run stopped after 1, 2 and 3 steps), first value = the weights."""
    spec = ArchSpec.from_dict(SPEC)
    decay = 0.6
    over = {"retrain.ema": decay, "retrain.checkpoint_every": 1, "retrain.val_every": 10}
    w = []
    for k in (1, 2, 3):
        retrain(spec, cfg(10, **over), tmp_path / str(k), data_root=None, progress=False,
                stop_after=k)
        w.append(torch.load(tmp_path / str(k) / "model_last.pt", weights_only=True))
    ema = dict(w[0]["params"])
    for nxt in w[1:]:
        ema = {n: decay * ema[n] + (1 - decay) * nxt["params"][n] for n in ema}
    got = w[2]["params_ema"]
    assert set(got) == set(ema)
    for n in ema:
        torch.testing.assert_close(got[n], ema[n], rtol=1e-5, atol=1e-7)
    assert not torch.equal(got["backbone.head.weight"], w[2]["params"]["backbone.head.weight"])
    no_ema = retrain(spec, cfg(2, **{"retrain.ema": 0}), tmp_path / "plain", data_root=None,
                     progress=False)
    assert "eval_ema" not in no_ema
    assert "params_ema" not in torch.load(tmp_path / "plain" / "model_last.pt", weights_only=True)


def test_retrain_config_values_are_checked(tmp_path):
    from nas.errors import UsageError

    with pytest.raises(UsageError, match="retrain.ema: a decay in"):
        retrain(ArchSpec.from_dict(SPEC), cfg(2, **{"retrain.ema": 1.5}), tmp_path,
                data_root=None, progress=False)
    assert not (tmp_path / "retrain.pt").exists()


def test_tensorboard_logs_loss_lr_and_psnr(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    retrain(ArchSpec.from_dict(SPEC), cfg(4, **{"retrain.tensorboard": "true"}), tmp_path / "tb1",
            data_root=None, progress=False)
    acc = EventAccumulator(str(tmp_path / "tb1" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"losses/l_pix", "lr", "metrics/val_psnr", "metrics/val_psnr_ema"} <= tags
    assert [e.step for e in acc.Scalars("losses/l_pix")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("metrics/val_psnr")] == [2, 4]
    # without the package: a one-line error naming the extra, before any step
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    from nas.errors import UsageError

    with pytest.raises(UsageError, match=r"acla-nas\[tensorboard\]"):
        retrain(ArchSpec.from_dict(SPEC), cfg(4, **{"retrain.tensorboard": "true"}),
                tmp_path / "tb2", data_root=None, progress=False)
    assert not (tmp_path / "tb2" / "retrain.pt").exists()
