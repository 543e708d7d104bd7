"""Every config shipped under experiments/ loads and validates (the DIV2K configs against a small
folder in the DIV2K layout made from T91), and the full-size retrain config is the EDSR recipe."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nas.config import load_config
from nas.restoration.images import list_images, load_image
from nas.restoration.imresize import imresize
from nas.restoration.task import modcrop
from nas.study.run import prepare_study
from tests.conftest import REPO, data_root

CONFIGS = sorted((REPO / "experiments").rglob("*.yaml"))
DIV2K = [p for p in CONFIGS if "div2k" in p.name]


@pytest.fixture(scope="module")
def div2k_like(tmp_path_factory):
    """``HR/0001.png`` ... and ``LR/0001x2.png`` ... from 24 T91 images of at least 96 pixels."""
    shared_data = data_root()
    if shared_data is None:
        pytest.skip("real images not found: set ACLA_NAS_DATA")
    root = tmp_path_factory.mktemp("div2k")
    (root / "HR").mkdir(), (root / "LR").mkdir()
    big = [f for f in list_images(shared_data / "train" / "T91") if min(Image.open(f).size) >= 96]
    for n, f in enumerate(big[:24], start=1):
        hr = modcrop(load_image(f), 2)
        Image.fromarray(hr).save(root / "HR" / f"{n:04d}.png")
        lr = imresize(hr.astype(np.float64), 0.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(lr).save(root / "LR" / f"{n:04d}x2.png")
    return root


def test_the_full_size_configs_exist():
    names = {p.relative_to(REPO).as_posix() for p in DIV2K}
    assert names == {"experiments/search/sr_x2_div2k_edsr_baseline.yaml",
                     "experiments/retrain/edsr_baseline_x2_div2k.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_config_loads(path, request):
    over = []
    if path in DIV2K:  # where the README tells users to put DIV2K, here the T91 stand-in
        div2k_like = request.getfixturevalue("div2k_like")  # only these need the T91 images
        over = [f"data.source={div2k_like / 'HR'}", f"data.lr_source={div2k_like / 'LR'}"]
    cfg = load_config(path, over)
    assert cfg.name and cfg.data.patch_size % cfg.task.hr_modulo == 0
    if cfg.hpo:
        setup = prepare_study(cfg, str(path))
        for name, spec in setup.specs.items():
            assert spec.low is not None and spec.high is not None, name
        target = cfg.search.penalty.target_gflops
        if "search.penalty.target_gflops" in setup.specs and target is not None:
            s = setup.specs["search.penalty.target_gflops"]
            assert s.low <= target <= s.high, (target, s.low, s.high)


def test_full_size_retrain_config_is_the_edsr_recipe(div2k_like):
    cfg = load_config(REPO / "experiments/retrain/edsr_baseline_x2_div2k.yaml",
                      [f"data.source={div2k_like / 'HR'}", f"data.lr_source={div2k_like / 'LR'}"])
    r = cfg.retrain
    assert (cfg.task.name, cfg.task.scale) == ("sr", 2)
    assert (r.steps, r.lr, r.milestones, r.gamma) == (300000, 1e-4, [200000], 0.5)
    assert (cfg.data.patch_size, cfg.data.batch_size) == (96, 16)
    assert r.ema == 0.999 and r.eval_sets == ["Set5", "Set14", "B100", "Urban100", "Manga109"]
    assert cfg.data.disk_backed(800)
    search = load_config(REPO / "experiments/search/sr_x2_div2k_edsr_baseline.yaml",
                         [f"data.source={div2k_like / 'HR'}",
                          f"data.lr_source={div2k_like / 'LR'}"])
    assert search.space.backbone["preset"] == "edsr-baseline"
