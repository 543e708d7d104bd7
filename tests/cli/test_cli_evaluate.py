"""`acla-nas eval` and `acla-nas flops`: the bicubic anchor through the real command, FLOPs of an
ArchSpec, and one-line errors (exit 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nas.cli import main
from tests.conftest import spec_dict


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_bicubic_set5_x2_anchor(shared_data, capsys):
    rc = main(["eval", "--bicubic", "--sets", "Set5", "--scale", "2",
               "--data-root", str(shared_data / "benchmarks"), "-f", "json"])
    assert rc == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["set"] == "Set5" and rows[0]["images"] == 5
    assert abs(rows[0]["psnr"] - 33.66) <= 0.03
    assert abs(rows[0]["ssim"] - 0.9299) <= 0.0015


def test_table_prints_convention(shared_data, capsys, tmp_path):
    rc = main(["eval", "--bicubic", "--sets", "Set5", "--scale", "4", "--data-root",
               str(shared_data), "--per-image", str(tmp_path / "per.csv")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Y (BT.601" in out and "crop_border=4" in out
    lines = (tmp_path / "per.csv").read_text().splitlines()
    assert lines[0].startswith("set,image,psnr,ssim") and len(lines) == 6


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sets", "Set5", "--data-root", "/nonexistent/data"], "--data-root"),
        (["--sets", "Set55", "--data-root", "{root}"], "unknown set 'Set55'"),
        (["--sets", "Set5", "--scale", "5", "--data-root", "{root}"], "scale must be 2, 3 or 4"),
    ],
)
def test_bad_input_one_line_exit_2(request, args, needle):
    if any("{root}" in a for a in args):  # only these cases read the real images
        args = [a.replace("{root}", str(request.getfixturevalue("shared_data"))) for a in args]
    r = run_cli("eval", "--bicubic", *args)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in r.stderr


def test_corrupt_png_and_empty_folder(tmp_path):
    hr = tmp_path / "benchmarks" / "Set5" / "HR"
    hr.mkdir(parents=True)
    r = run_cli("eval", "--bicubic", "--sets", "Set5", "--data-root", str(tmp_path))
    assert r.returncode == 2 and "no images" in r.stderr and len(r.stderr.splitlines()) == 1
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(hr / "ok.png")
    (hr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = run_cli("eval", "--bicubic", "--sets", "Set5", "--data-root", str(tmp_path))
    assert r.returncode == 2 and "broken.png" in r.stderr and len(r.stderr.splitlines()) == 1


def test_missing_data_root_env(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if k != "ACLA_NAS_DATA"}
    r = run_cli("eval", "--bicubic", "--sets", "Set5", env=env)
    assert r.returncode == 2 and "ACLA_NAS_DATA" in r.stderr


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "eval" in r.stdout


# Published bicubic table (Y, crop = scale; e.g. the EDSR/RCAN papers). B100 here is the
# 480x320 crop, so only x2 and x4 are comparable.
PUBLISHED = [("Set5", 2, 33.66, 0.9299), ("Set14", 2, 30.24, 0.8688), ("B100", 2, 29.56, 0.8431),
             ("Set5", 3, 30.39, 0.8682), ("Set14", 3, 27.55, 0.7742),
             ("Set5", 4, 28.42, 0.8104), ("Set14", 4, 26.00, 0.7027), ("B100", 4, 25.96, 0.6675)]


@pytest.mark.parametrize("name,scale,psnr,ssim", PUBLISHED)
def test_bicubic_matches_published_table(shared_data, name, scale, psnr, ssim):
    from nas.restoration.evaluate import evaluate_sets, per_set_means
    from nas.restoration.task import Task

    row = per_set_means(evaluate_sets(shared_data, [name], Task("sr", scale=scale), None,
                                  progress=False)).iloc[0]
    assert abs(row["psnr"] - psnr) <= 0.03 and abs(row["ssim"] - ssim) <= 0.0015


def test_flops_command(tmp_path, capsys):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(spec_dict()))
    assert main(["flops", str(path), "--lr-size", "20x30", "-f", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["analytic_flops"] == row["measured_flops"] > 0
    path.write_text("{not json")
    assert main(["flops", str(path)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
