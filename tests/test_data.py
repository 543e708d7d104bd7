import numpy as np
import pytest
from PIL import Image

from nas.data import (
    BUILTIN_PHOTOS,
    PatchSampler,
    Task,
    bayer_rggb,
    find_set,
    jpeg_compress,
    load_builtin,
    load_image,
    load_set,
    make_pairs,
    modcrop,
    split_names,
    to_rgb_uint8,
)
from nas.errors import UsageError


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


def test_modcrop():
    assert modcrop(np.zeros((13, 10, 3)), 4).shape == (12, 8, 3)


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
    from nas.data import load_folder

    with pytest.raises(UsageError, match="no images"):
        load_folder(empty)


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
        from nas.imresize import imresize

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


def test_split_names():
    train, val = split_names([f"im{i}" for i in range(10)], 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and len(train) == 8
    with pytest.raises(UsageError):
        split_names(["a"], 0.5)


def test_png_roundtrip_of_saved_image(tmp_path):
    img = (np.random.default_rng(0).random((9, 7, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert np.array_equal(load_image(tmp_path / "x.png"), img)
