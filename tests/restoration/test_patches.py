"""Training patches at scale (nas.restoration.patches): alignment, the deterministic stream and its
exact resume with DataLoader workers, sub-image caches and paired LR folders (DIV2K layout)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config import load_config
from nas.errors import UsageError
from nas.restoration.data import make_pairs
from nas.restoration.images import list_images, load_builtin, load_image
from nas.restoration.imresize import imresize
from nas.restoration.patches import MemorySource, PatchDataset, PatchStream, SubImageSource
from nas.restoration.task import Task, modcrop


def stream_of(task, patch=24, batch=4, seed=0, workers=0, augment=True, names=("astronaut",
                                                                                "coffee")):
    pairs = make_pairs(load_builtin(list(names)), task)
    return PatchStream(MemorySource(pairs), task, patch, batch, seed=seed, workers=workers,
                       augment=augment)


def bayer_phase_kept(lq):
    return float(lq[1, 0::2, 0::2].abs().sum()) == 0.0 and float(lq[0, 1::2, :].abs().sum()) == 0.0


@pytest.mark.parametrize("task", [Task("sr", scale=2), Task("sr", scale=3), Task("denoise"),
                                  Task("demosaic"), Task("jpeg", quality=20)])
def test_patches_are_aligned(task):
    lq, hr = stream_of(task, augment=False).next()
    s = task.scale
    assert hr.shape == (4, 3, 24, 24) and lq.shape == (4, 3, 24 // s, 24 // s)
    assert 0 <= hr.min() and hr.max() <= 1
    if task.name == "sr":  # re-degrading the HR crop gives the LR crop (up to the border)
        re = imresize(hr[0].permute(1, 2, 0).numpy().astype(np.float64), 1 / s)
        assert np.abs(re - lq[0].permute(1, 2, 0).numpy())[2:-2, 2:-2].mean() < 0.01
    if task.name == "demosaic":
        assert all(bayer_phase_kept(x) for x in lq)
    if task.name == "denoise":  # AWGN of the configured sigma on the HR patch
        sd = float((lq - hr).std()) * 255
        assert abs(sd - task.sigma) < 0.15 * task.sigma


def test_stream_is_a_function_of_seed_step_and_slot_and_resumes_exactly():
    task = Task("sr", scale=2)
    ref = stream_of(task, seed=3)
    batches = [ref.next() for _ in range(5)]
    # DataLoader workers build the same patches as the calling process
    par = stream_of(task, seed=3, workers=2)
    for want in batches:
        got = par.next()
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    par.close()
    # a stream killed after 2 steps and restored from its state continues where it was
    cut = stream_of(task, seed=3, workers=2)
    cut.next(), cut.next()
    state = cut.state_dict()
    cut.close()
    resumed = stream_of(task, seed=3, workers=2)
    resumed.load_state_dict(state)
    for want in batches[2:]:
        assert all(torch.equal(a, b) for a, b in zip(resumed.next(), want))
    resumed.close()
    other = stream_of(task, seed=4).next()
    assert not torch.equal(other[1], batches[0][1])


def test_two_ranks_serve_disjoint_halves_of_the_global_batch(monkeypatch):
    task = Task("denoise", sigma=25)
    whole = stream_of(task, batch=4).next()
    halves = []
    for rank in (0, 1):
        s = stream_of(task, batch=4)
        s.rank, s.world = rank, 2  # what torch.distributed would set in a 2-process group
        halves.append(s.next())
    for k in (0, 1):
        assert torch.equal(torch.cat([halves[0][k], halves[1][k]]), whole[k])


def test_bad_patches_name_the_image():
    task = Task("sr", scale=2)
    src = MemorySource(make_pairs({"tiny": np.zeros((20, 20, 3), np.uint8)}, task))
    with pytest.raises(UsageError, match="tiny: image 20x20 is smaller than the patch size 32"):
        PatchDataset(src, task, 32, seed=0)
    with pytest.raises(UsageError, match="patch_size: 15 is not a multiple of 2"):
        PatchDataset(src, task, 15, seed=0)
    with pytest.raises(UsageError, match="no training images"):
        PatchDataset(MemorySource([]), task, 16, seed=0)


@pytest.fixture
def div2k_layout(tmp_path, shared_data):
    """A small folder in the DIV2K layout made from T91: ``HR/0001.png`` and ``LR/0001x2.png``
    (MATLAB-bicubic LR, as DIV2K's ``DIV2K_train_LR_bicubic/X2``)."""
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir(), lr_dir.mkdir()
    for n, f in enumerate(list_images(shared_data / "train" / "T91")[:6], start=1):
        hr = modcrop(load_image(f), 2)
        Image.fromarray(hr).save(hr_dir / f"{n:04d}.png")
        lr = imresize(hr.astype(np.float64), 0.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(lr).save(lr_dir / f"{n:04d}x2.png")
    return hr_dir, lr_dir


def test_div2k_layout_paired_lr_folder_equals_bicubic_made_once(tmp_path, div2k_layout):
    hr_dir, lr_dir = div2k_layout
    task = Task("sr", scale=2)
    files = list_images(hr_dir)
    paired = SubImageSource(files, task, tmp_path / "cache", crop=96, step=48, lr_folder=lr_dir)
    made = SubImageSource(files, task, tmp_path / "cache", crop=96, step=48)
    assert paired.folder != made.folder and len(paired) == len(made) > len(files)
    for i in range(len(paired)):
        a, b = paired.pair(i), made.pair(i)
        assert a.name == b.name and np.array_equal(a.hr, b.hr)
        assert np.array_equal(a.lq, b.lq)  # the same MATLAB bicubic, rounded to uint8
        assert a.hr.shape[0] <= 96 and a.lq.shape[0] * 2 == a.hr.shape[0]
    # the whole images are covered: sub-images of one image reach its last row and column
    h, w = load_image(files[0]).shape[:2]
    ends = [(int(n.split("_")[1]) + paired.size(i)[0], int(n.split("_")[2]) + paired.size(i)[1])
            for i, n in enumerate(paired.name(j) for j in range(len(paired)))
            if n.startswith("0001_")]
    assert max(e[0] for e in ends) == h - h % 2 and max(e[1] for e in ends) == w - w % 2
    # a second source over the same files reads the cache instead of preparing again
    again = SubImageSource(files, task, tmp_path / "cache", crop=96, step=48, lr_folder=lr_dir)
    assert again.items == paired.items


def test_div2k_layout_errors_are_one_line(tmp_path, div2k_layout):
    hr_dir, lr_dir = div2k_layout
    task = Task("sr", scale=2)
    (lr_dir / "0003x2.png").unlink()
    with pytest.raises(UsageError, match=r"no LR image for 0003.png in .*0003x2.png"):
        SubImageSource(list_images(hr_dir), task, tmp_path / "c1", lr_folder=lr_dir)
    shutil.copy(lr_dir / "0001x2.png", lr_dir / "0003x2.png")  # an LR image of another size
    with pytest.raises(UsageError, match="0003.png: LR .* is not HR .* / 2"):
        SubImageSource(list_images(hr_dir), task, tmp_path / "c2", lr_folder=lr_dir)


def test_config_with_a_div2k_layout_folder_trains_from_the_cache(tmp_path, div2k_layout,
                                                                 monkeypatch):
    from nas.engine.scoring import load_splits

    hr_dir, lr_dir = div2k_layout
    monkeypatch.setenv("ACLA_NAS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.source={hr_dir}", f"data.lr_source={lr_dir}",
                             "data.storage=subimages", "data.val_fraction=0.2",
                             "data.score_fraction=0.2", "data.patch_size=32"])
    splits = load_splits(cfg)
    assert isinstance(splits.train, SubImageSource)
    assert list((tmp_path / "cache" / "subimages").iterdir())
    lq, hr = PatchStream(splits.train, cfg.task, 32, 4, seed=0).next()
    assert lq.shape == (4, 3, 16, 16) and hr.shape == (4, 3, 32, 32)
    assert splits.score and all(p.lq.shape[0] * 2 == p.hr.shape[0] for p in splits.score)
    with pytest.raises(UsageError, match="data.lr_source: .*does not exist"):
        load_config(None, [f"data.source={hr_dir}", f"data.lr_source={tmp_path / 'nope'}"])
    # the in-memory path would degrade the HR images itself and silently ignore the LR folder
    with pytest.raises(UsageError, match="data.storage: 'memory' does not read data.lr_source"):
        load_config(None, [f"data.source={hr_dir}", f"data.lr_source={lr_dir}", "data.storage=memory"])


def test_data_augment_switch_reaches_the_keys_and_refuses_non_bools():
    """``data.augment: false`` changes the scores and the supernet (so it is part of their keys);
    the default leaves the keys exactly as a config without the field had them."""
    from nas.engine.scoring import protocol_key
    from nas.engine.supernet_search import supernet_key, weight_config

    on, off = load_config(None, []), load_config(None, ["data.augment=false"])
    assert on.data.augment is True and off.data.augment is False
    assert "augment" not in weight_config(on)["data"]
    assert protocol_key(on) != protocol_key(off) and supernet_key(on) != supernet_key(off)
    with pytest.raises(UsageError, match="data.augment: expected true"):
        load_config(None, ["data.augment=maybe"])
