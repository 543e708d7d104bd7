"""Paired data: degradation cache, patch sampling, train/val split (nas.restoration.data)."""

import numpy as np
import pytest

from nas.errors import UsageError
from nas.restoration.data import PatchSampler, make_pairs, split_data
from nas.restoration.images import load_builtin
from nas.restoration.task import Task


def test_degraded_inputs_are_cached(tmp_path, monkeypatch):
    imgs = load_builtin(["chelsea"])
    task = Task("sr", scale=3)
    p1 = make_pairs(imgs, task, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    monkeypatch.setattr(Task, "degrade", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    p2 = make_pairs(imgs, task, cache_dir=tmp_path)  # served from the cache
    assert np.array_equal(p1[0].lq, p2[0].lq)
    assert p1[0].lq.shape == (100, 150, 3)


@pytest.mark.parametrize("task", [Task("sr", scale=2), Task("sr", scale=3), Task("denoise"),
                                  Task("demosaic"), Task("jpeg", quality=20)])
def test_patch_sampler_alignment(task):
    imgs = load_builtin(["astronaut", "coffee"])
    pairs = make_pairs(imgs, task)
    sampler = PatchSampler(pairs, task, patch_size=24, augment=False, seed=0)
    lq, hr = sampler.sample(4)
    s = task.scale
    assert hr.shape == (4, 3, 24, 24) and lq.shape == (4, 3, 24 // s, 24 // s)
    assert 0 <= hr.min() and hr.max() <= 1
    if task.name == "sr":  # patches are aligned: re-degrading the HR crop is close to the LR crop
        from nas.restoration.imresize import imresize

        re = imresize(hr[0].permute(1, 2, 0).numpy().astype(np.float64), 1 / s)
        inner = np.abs(re - lq[0].permute(1, 2, 0).numpy())[2:-2, 2:-2]
        assert inner.mean() < 0.01
    if task.name == "demosaic":  # the RGGB phase is kept
        assert torch_bayer_ok(lq[0])


def torch_bayer_ok(lq):
    return float(lq[1, 0::2, 0::2].abs().sum()) == 0.0 and float(lq[0, 1::2, :].abs().sum()) == 0.0


def test_patch_sampler_state_roundtrip():
    imgs = load_builtin(["astronaut"])
    task = Task("sr", scale=2)
    s = PatchSampler(make_pairs(imgs, task), task, 16, seed=1)
    state = s.state_dict()
    a = s.sample(2)
    s.load_state_dict(state)
    b = s.sample(2)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))


def test_patch_larger_than_image_names_the_image():
    task = Task("sr", scale=2)
    pairs = make_pairs({"tiny": np.zeros((20, 20, 3), np.uint8)}, task)
    with pytest.raises(UsageError, match="tiny: image 20x20 is smaller than the patch size 32"):
        PatchSampler(pairs, task, 32)
    with pytest.raises(UsageError, match="patch_size"):
        PatchSampler(pairs, task, 15)


def test_split_data_three_ways_and_keeps_groups_together():
    names = [f"im{i}" for i in range(10)]
    train, val, score = split_data(names, 0.2, 0.2, seed=0)
    assert (len(train), len(val), len(score)) == (6, 2, 2)
    assert sorted(train + val + score) == sorted(names)
    train2, val2, score2 = split_data(names, 0.2, 0.0, seed=0)
    assert score2 == [] and len(val2) == 2
    for seed in range(20):  # a pair never straddles two splits
        parts = split_data(names, 0.2, 0.2, seed=seed, groups=[["im3", "im7"]])
        assert any({"im3", "im7"} <= set(p) for p in parts)
    assert split_data(["a", "b", "c"], 0.3, 0.3, seed=0)[2]  # every split gets an image
    with pytest.raises(UsageError, match="need at least 3 images"):
        split_data(["a", "b"], 0.3, 0.3)
    with pytest.raises(UsageError, match="need at least 2 images"):
        split_data(["a", "b"], 0.5, 0.0, groups=[["a", "b"]])
    with pytest.raises(UsageError, match="val_fraction"):
        split_data(names, 1.5)
    with pytest.raises(UsageError, match="score_fraction"):
        split_data(names, 0.5, 0.6)


def test_builtin_stereo_pair_stays_in_one_split():
    from nas.restoration.data import DataConfig
    from nas.restoration.images import BUILTIN_PHOTOS

    groups = DataConfig().split_groups()
    for seed in range(10):
        parts = split_data(BUILTIN_PHOTOS, 0.2, 0.2, seed=seed, groups=groups)
        assert any({"motorcycle_left", "motorcycle_right"} <= set(p) for p in parts)
