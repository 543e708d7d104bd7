"""Every bad input a newcomer can give, across all seven commands: one line on stderr naming the
file or field, exit code 2, no traceback, and nothing written that blocks the corrected re-run.

Each case builds what it needs in ``tmp_path`` (``{t}`` in an argument is replaced by it) and runs
the command line in-process; an unexpected exception would escape ``main`` and fail the test.
"""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from nas.cli import main
from tests.conftest import TINY_SETS, spec_dict, write_study_config

pytestmark = pytest.mark.usefixtures("one_thread")

def tiny(*more: str) -> list[str]:
    out = []
    for s in (*TINY_SETS, *more):
        out += ["--set", s]
    return out


def make_files(t):
    """The files the cases refer to."""
    (t / "afile").write_text("x")
    (t / "empty").mkdir()
    (t / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    (t / "dup.yaml").write_text("name: a\nsearch: {steps: 3}\nsearch: {lr: 1}\n")
    (t / "typo.yaml").write_text("name: a\nserch: {steps: 3}\n")
    (t / "ok.yaml").write_text("name: ok\n")
    (t / "arch.json").write_text(json.dumps(spec_dict()))
    (t / "badjson.json").write_text("{not json")
    bad_label = spec_dict()
    bad_label["choices"]["b07/op"] = "acla"
    (t / "badlabel.json").write_text(json.dumps(bad_label))
    (t / "bin.json").write_bytes(b"\xff\xfe\x00\x01")
    torch.save([1, 2, 3], t / "list.pt")
    torch.save({"params": {"head.weight": torch.zeros(2)}}, t / "other.pt")
    (t / "garbage.pt").write_bytes(b"not a torch file at all")
    write_study_config(t / "study.yaml")
    st = f"sqlite:///{t / 'st' / 'study.db'}"
    (t / "st").mkdir()
    study = optuna.create_study(storage=st, study_name="s", directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[30.0, 1.0], state=optuna.trial.TrialState.COMPLETE))
    (t / "st0").mkdir()
    optuna.create_study(storage=f"sqlite:///{t / 'st0' / 'study.db'}", study_name="s0",
                        directions=["maximize", "minimize"])
    (t / "single").mkdir()
    one = optuna.create_study(storage=f"sqlite:///{t / 'single' / 'study.db'}", study_name="one",
                              direction="maximize")
    one.add_trial(optuna.trial.create_trial(value=30.0, state=optuna.trial.TrialState.COMPLETE))
    (t / "notjournal").mkdir()
    (t / "notjournal" / "x.log").write_text('{"a": 1}\n')
    (t / "zero.db").write_bytes(b"")
    bad_op = spec_dict()
    bad_op.setdefault("space", {})["op_config"] = {"acla": {"tau": -1}}
    (t / "badop.json").write_text(json.dumps(bad_op))


CASES = [
    # search
    ("search", ["-c", "{t}/missing.yaml"], r"missing\.yaml: no such config file"),
    ("search", ["-c", "{t}"], r"is a folder, expected a config file"),
    ("search", ["-c", "{t}/bin.yaml"], r"bin\.yaml: not a text config file"),
    ("search", ["-c", "{t}/dup.yaml"], r"dup\.yaml: duplicated key 'search' \(first at line 2\)"),
    ("search", ["-c", "{t}/typo.yaml"], r"typo\.yaml: serch: unknown key \(did you mean 'search'"),
    ("search", ["-c", "{t}/study.yaml", "--set", "search.lr_size=[a,5]"], r"search\.lr_size"),
    ("search", ["-c", "{t}/study.yaml", "--set", "data.patch_size=25", "--out", "{t}/o1"],
     r"data\.patch_size: 25 is not a multiple of 2"),
    ("search", ["-c", "{t}/study.yaml", "--set", "data.source={t}/empty", "--out", "{t}/o2"],
     r"data\.source: .*no images"),
    ("search", ["-c", "{t}/study.yaml", "--out", "{t}/afile/sub"], r"afile.*a (parent|file)"),
    ("search", ["-c", "{t}/study.yaml", "--out", "{t}/afile"], r"is a file"),
    ("search", ["-c", "{t}/study.yaml", "--trials", "0"], r"--trials: must be >= 1"),
    ("search", ["-c", "{t}/study.yaml", "--storage", "study.db"], r"--storage study\.db: expected"),
    ("search", ["-c", "{t}/study.yaml", "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/x",
                "--out", "{t}/o3"], r"--storage postgresql\+psycopg2://u:\*\*\*@"),
    ("search", ["-c", "{t}/study.yaml", "--set", "hpo.params={}"], r"hpo\.params: empty search"),
    ("search", ["-c", "{t}/study.yaml", "--device", "gpu"], r"--device: .*expected auto, cpu"),
    # pareto
    ("pareto", ["{t}/nothing"], r"no such results folder"),
    ("pareto", ["{t}/empty"], r"no study\.db or journal"),
    ("pareto", ["{t}/st", "--ref-point", "abc"], r"--ref-point: expected PSNR_DB,GFLOPS"),
    ("pareto", ["{t}/st", "--plot", "{t}/afile/p.png"], r"afile.*a (parent|file)"),
    ("pareto", ["{t}/st", "--study", "x"], r"no study 'x'"),
    ("pareto", ["{t}/st", "-f", "xml"], r"invalid choice: 'xml'"),
    # export
    ("export", ["{t}/st", "--trial", "99"], r"--trial 99: study s has trials 0\.\.0"),
    ("export", ["{t}/st0", "--knee"], r"--knee: study s0 has no complete trial"),
    ("export", ["{t}/st", "--max-gflops", "0.1"], r"--max-gflops 0\.1: no front trial"),
    ("export", ["{t}/st"], r"one of the arguments --trial --knee --max-gflops is required"),
    # supernet
    ("supernet", ["-c", "{t}/missing.yaml"], r"no such config file"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("search.lr=1e12", "search.grad_clip=0"),
                  "--out", "{t}/div"], r"training diverged \(supernet step \d+: L1 is (nan|inf)"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny(), "--out", "{t}/afile"], r"--out .*is a file"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("search.largest_path_steps=99")],
     r"search\.largest_path_steps: must be in 0\.\.search\.supernet_steps"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("search.warmup_steps=9")],
     r"search\.warmup_steps: replaced by search\.largest_path_steps"),
    # retrain
    ("retrain", ["{t}/bin.json", "-c", "{t}/ok.yaml"], r"bin\.json: not a text ArchSpec file"),
    ("retrain", ["{t}/badjson.json", "-c", "{t}/ok.yaml"], r"badjson\.json: invalid JSON at line 1"),
    ("retrain", ["{t}/badlabel.json", "-c", "{t}/ok.yaml"], r"unknown label 'b07/op'"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", "--inherit", "{t}/garbage.pt",
                 *tiny(), "--out", "{t}/r1"], r"--inherit: .*garbage\.pt: not a supernet checkpoint"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", "--inherit", "{t}/nope.pt"],
     r"--inherit: .*nope\.pt: no such supernet checkpoint"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", "--set", "retrain.lr=-1"],
     r"retrain\.lr: must be > 0"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", "--set", "retrain.milestones=[a]"],
     r"retrain\.milestones\[0\]"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", "--set", "retrain.val_set=Set6"],
     r"retrain\.val_set: unknown benchmark set 'Set6' \(did you mean 'Set5'"),
    ("retrain", ["{t}/arch.json", "-c", "{t}/ok.yaml", *tiny("retrain.lr=1e12"), "--out", "{t}/r2"],
     r"training diverged \(retrain step \d+"),
    # eval
    ("eval", ["--arch", "{t}/arch.json", "--weights", "{t}/list.pt", "--sets", "Set5"],
     r"list\.pt: holds no state dict of weights"),
    ("eval", ["--arch", "{t}/arch.json", "--weights", "{t}/other.pt", "--sets", "Set5"],
     r"other\.pt: weights do not fit .*missing 'backbone\."),
    ("eval", ["--arch", "{t}/arch.json", "--weights", "{t}/garbage.pt", "--sets", "Set5"],
     r"garbage\.pt: cannot load checkpoint"),
    ("eval", ["--arch", "{t}/arch.json", "--sets", "Set5"], r"--weights: required with --arch"),
    ("eval", ["--bicubic", "--sets", "Set6"], r"--sets: unknown set 'Set6' \(did you mean"),
    ("eval", ["--bicubic", "--sets", "Set5", "--data-root", "{t}/nope"], r"--data-root: .* does not exist"),
    ("eval", ["--bicubic", "--sets", "Set5", "--per-image", "{t}/afile/x.csv"], r"afile.*a (parent|file)"),
    ("eval", ["--bicubic", "--sets", "Set5", "--scale", "5"], r"scale must be 2, 3 or 4"),
    ("eval", ["--bicubic", "--sets", "Set5", "--task", "jpeg", "--quality", "0"],
     r"quality: must be in 1\.\.100"),
    ("eval", ["--bicubic", "--weights", "{t}/list.pt"], r"--weights/--ema: only with --arch"),
    # flops
    ("flops", ["{t}/arch.json", "--lr-size", "0x5"], r"--lr-size: expected HxW"),
    ("flops", ["{t}/missing.json"], r"missing\.json: no such ArchSpec file"),
    ("flops", ["{t}/badlabel.json"], r"unknown label 'b07/op'"),
    ("flops", ["{t}/badop.json"], r"badop\.json: space\.op_config\.acla: tau must be a positive"),
    # operator and backbone keywords are checked before anything is built or written
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("space.op_config={acla: {tau: -1}}"), "--out", "{t}/o1"],
     r"space\.op_config\.acla: tau must be a positive number, got -1"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("search.rerank=-1"), "--out", "{t}/o1"],
     r"search\.rerank: an int >= 0 \(0: off\), got -1"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("space.op_config={acla: {dilation: 0}}"), "--out", "{t}/o1"],
     r"space\.op_config\.acla: dilation must be an int >= 1"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("space.op_config={acla: {bogus: 1}}"), "--out", "{t}/o1"],
     r"space\.op_config\.acla: .*unexpected keyword argument 'bogus'"),
    ("supernet", ["-c", "{t}/ok.yaml", *tiny("space.backbone={preset: edsr-tiny, res_scale: abc}"),
                  "--out", "{t}/o1"], r"space\.backbone: res_scale must be a positive number"),
    # storages and studies that are not what the command reads
    ("search", ["-c", "{t}/study.yaml", "--storage", "journal:", "--out", "{t}/sj"],
     r"--storage journal:: no journal file given"),
    ("pareto", ["{t}/single"], r"study 'one' is not a PSNR \(maximize\) / GFLOPs \(minimize\) study"),
    ("export", ["{t}/single", "--trial", "0"], r"is not a PSNR \(maximize\) / GFLOPs"),
    ("pareto", ["{t}/notjournal"], r"x\.log: not an Optuna journal"),
    ("pareto", ["{t}/zero.db"], r"zero\.db: not an Optuna study database"),
    ("pareto", ["sqlite:///{t}/nothere.db"], r"nothere\.db: no such study database"),
    ("pareto", ["{t}/st", "--ref-point", "nan,nan"], r"--ref-point: expected finite numbers"),
    ("pareto", ["{t}/st", "--plot", "{t}/x.foo"], r"--plot .*x\.foo: unknown image format 'foo'"),
]

#: commands whose cases read the real benchmark images (the rest run on a fresh clone without them)
NEEDS_IMAGES = ("eval", "retrain")


@pytest.mark.parametrize("cmd, args, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, request, cmd, args,
                                          message):
    import re

    monkeypatch.chdir(tmp_path)
    data = request.getfixturevalue("shared_data") if cmd in NEEDS_IMAGES else tmp_path / "no-data"
    monkeypatch.setenv("ACLA_NAS_DATA", str(data))
    make_files(tmp_path)
    argv = [cmd, *[a.replace("{t}", str(tmp_path)) for a in args]]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit from inside main
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"acla-nas {cmd}: error:"), err
    assert "Traceback" not in err
    assert re.search(message, lines[-1]), lines[-1]
    error_lines = [ln for ln in lines if "error" in ln]
    assert len(error_lines) == 1, err
    assert not (tmp_path / "o1").exists()  # a refused config leaves no run folder in the way
    if cmd == "pareto" and args[0] == "{t}/zero.db":
        assert (tmp_path / "zero.db").stat().st_size == 0  # a read-only command wrote nothing


def test_validation_errors_write_nothing_in_the_way(tmp_path, capsys, monkeypatch):
    """A data error is found before the study exists, so the corrected command just runs."""
    monkeypatch.chdir(tmp_path)
    cfg = write_study_config(tmp_path / "s.yaml", hpo__trials=1, hpo__reference_trials=[])
    out = tmp_path / "out"
    assert main(["search", "-c", str(cfg), "--out", str(out), "--set", "data.patch_size=25"]) == 2
    assert not out.exists()
    assert main(["search", "-c", str(cfg), "--out", str(out), "-q"]) == 0
    assert "1/1 searched trials finished" in capsys.readouterr().out


def test_a_study_of_another_config_that_computed_nothing_is_replaced(tmp_path, capsys, monkeypatch):
    """The first run dies inside its first trial (here: an image that cannot be decoded); the user
    fixes the config; the re-run in the same folder replaces the empty study."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 40, 100, 50)).save(imgs / f"im{i}.png")
    (imgs / "im3.png").write_bytes((imgs / "im0.png").read_bytes()[:60])  # header only: truncated
    cfg = write_study_config(tmp_path / "s.yaml", hpo__trials=1, hpo__reference_trials=[],
                             data__source=str(imgs), data__images=[])
    out = tmp_path / "out"
    assert main(["search", "-c", str(cfg), "--out", str(out), "-q"]) == 2
    assert "im3.png: cannot decode image" in capsys.readouterr().err
    (imgs / "im3.png").unlink()
    assert main(["search", "-c", str(cfg), "--out", str(out), "-q", "--set",
                 "data.val_fraction=0.4"]) == 0
    assert "1/1 searched trials finished" in capsys.readouterr().out


def test_every_trial_failing_exits_nonzero_with_the_reasons(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_study_config(tmp_path / "s.yaml", hpo__trials=2, hpo__reference_trials=[],
                             search__grad_clip=0.0, search__lr=1.0e12)
    rc = main(["search", "-c", str(cfg), "--out", str(tmp_path / "out"), "-q"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "no searched trial completed (2 diverged)" in cap.err
    assert "0 complete" in cap.out


def test_truncated_checkpoints_are_moved_aside_and_the_run_starts_over(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    (tmp_path / "ok.yaml").write_text("name: ok\n")
    assert main(["supernet", "-c", str(tmp_path / "ok.yaml"), *tiny(), "--out", str(out), "-q"]) == 0
    ckpt = out / "search.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main(["supernet", "-c", str(tmp_path / "ok.yaml"), *tiny(), "--out", str(out)]) == 0
    assert any(p.name.startswith("search.pt.unreadable-") for p in out.iterdir())
    assert "unreadable checkpoint" in caplog.text


def test_run_folders_of_another_run_are_refused_unless_forced(tmp_path, capsys):
    (tmp_path / "ok.yaml").write_text("name: ok\n")
    out = tmp_path / "run"
    base = ["supernet", "-c", str(tmp_path / "ok.yaml"), *tiny(), "--out", str(out), "-q"]
    assert main(base) == 0
    first = (out / "arch.json").read_text()
    assert main(base) == 0  # same command, same folder: resumes (already finished)
    assert (out / "arch.json").read_text() == first
    assert main([*base, "--set", "search.alpha_steps=5"]) == 2
    assert "holds a supernet run with another config; use another --out, or --force" in \
        capsys.readouterr().err
    assert (out / "arch.json").read_text() == first  # nothing overwritten
    assert main([*base, "--set", "search.alpha_steps=5", "--force"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 6 + 5
    # a retrain pointed at the supernet's folder is refused as well
    rc = main(["retrain", str(out / "arch.json"), "-c", str(tmp_path / "ok.yaml"), *tiny(),
               "--out", str(out), "-q"])
    assert rc == 2
