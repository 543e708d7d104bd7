"""Image files, built-in photos and benchmark sets (nas.restoration.images)."""

import numpy as np
import pytest
from PIL import Image

from nas.errors import UsageError
from nas.restoration.images import (
    BUILTIN_PHOTOS,
    find_set,
    load_builtin,
    load_image,
    load_set,
    to_rgb_uint8,
)


def test_builtin_photos_are_real_rgb():
    imgs = load_builtin(["astronaut", "camera", "motorcycle_left"])
    for name, img in imgs.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert img.std() > 20  # a photo, not a flat image
    assert np.array_equal(imgs["camera"][..., 0], imgs["camera"][..., 2])  # grayscale -> RGB
    assert len(BUILTIN_PHOTOS) >= 10


def test_to_rgb_conversions():
    assert to_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.ones((2, 2), bool))[0, 0, 0] == 255


def test_grayscale_png_loads_as_rgb(shared_data):
    img = load_image(shared_data / "benchmarks" / "Set14" / "HR" / "bridge.png")
    assert img.shape[2] == 3 and np.array_equal(img[..., 0], img[..., 1])


def test_find_set_accepts_data_and_benchmarks_roots(shared_data):
    a = find_set(shared_data, "Set5")
    b = find_set(shared_data / "benchmarks", "set5")
    assert a == b and len(load_set(shared_data, "Set5")) == 5
    assert find_set(shared_data, "McMaster").name == "McMaster"


def test_unknown_and_missing_sets(shared_data, tmp_path):
    with pytest.raises(UsageError, match="did you mean 'Set14'"):
        find_set(shared_data, "Set41")
    with pytest.raises(UsageError, match="Urban100 not found"):
        find_set(tmp_path, "Urban100")


def test_corrupt_and_empty(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UsageError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    from nas.restoration.data import load_folder

    with pytest.raises(UsageError, match="no images"):
        load_folder(empty)


def test_png_roundtrip_of_saved_image(tmp_path):
    img = (np.random.default_rng(0).random((9, 7, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert np.array_equal(load_image(tmp_path / "x.png"), img)
