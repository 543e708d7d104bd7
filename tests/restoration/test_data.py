"""Paired data: degradation cache, train/val/score split (nas.restoration.data)."""

import numpy as np
import pytest

from nas.errors import UsageError
from nas.restoration.data import make_pairs, split_data
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
