"""Tasks and degradations (nas.restoration.task)."""

import numpy as np
import pytest

from nas.errors import UsageError
from nas.restoration.images import load_builtin
from nas.restoration.task import Task, bayer_rggb, jpeg_compress, modcrop


def test_modcrop():
    assert modcrop(np.zeros((13, 10, 3)), 4).shape == (12, 8, 3)


def test_task_validation():
    with pytest.raises(UsageError, match="scale"):
        Task("sr", scale=5)
    with pytest.raises(UsageError, match="task.name"):
        Task("deblur")
    with pytest.raises(UsageError, match="quality"):
        Task("jpeg", quality=0)
    assert Task("denoise", scale=4).scale == 1


def test_awgn_is_seeded_and_has_the_right_sigma():
    hr = np.full((64, 64, 3), 128, np.uint8)
    t = Task("denoise", sigma=25)
    a, b = t.degrade(hr, seed=3), t.degrade(hr, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, t.degrade(hr, seed=4))
    assert abs((a - 128).std() - 25) < 1.0


def test_bayer_pattern():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    m = bayer_rggb(img)
    assert m[0, 0, 0] == img[0, 0, 0] and m[0, 0, 1] == 0 and m[0, 0, 2] == 0
    assert m[0, 1, 1] == img[0, 1, 1] and m[1, 0, 1] == img[1, 0, 1]
    assert m[1, 1, 2] == img[1, 1, 2] and m[1, 1, 0] == 0
    assert (m > 0).sum(axis=2).max() == 1


def test_jpeg_quality_orders_error():
    img = load_builtin(["astronaut"])["astronaut"][:128, :128]
    err = [np.abs(jpeg_compress(img, q).astype(float) - img).mean() for q in (10, 40, 90)]
    assert err[0] > err[1] > err[2] > 0
