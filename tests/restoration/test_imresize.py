"""Tests for nas.restoration.imresize (MATLAB-compatible bicubic resize)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nas.restoration.imresize import (
    bicubic_degrade,
    contributions,
    imresize,
    imresize_uint8,
    round_half_away,
)

# --------------------------------------------------------------------------------------------
# Independent loop reference of MATLAB imresize.m (contributions + resizeAlongDim)
# --------------------------------------------------------------------------------------------


def _cubic_scalar(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _mirror(j: int, n: int) -> int:
    """1-based index j mirrored into [1, n] (MATLAB aux = [1:n, n:-1:1])."""
    while j < 1 or j > n:
        j = 1 - j if j < 1 else 2 * n + 1 - j
    return j


def _ref_contributions(in_len: int, out_len: int, scale: float, aa: bool):
    stretch = scale < 1 and aa
    kw = 4.0 / scale if stretch else 4.0
    taps = math.ceil(kw) + 2
    rows = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kw / 2)
        entries = []
        for p in range(taps):
            j = left + p
            w = scale * _cubic_scalar(scale * (u - j)) if stretch else _cubic_scalar(u - j)
            entries.append((_mirror(j, in_len) - 1, w))
        total = sum(w for _, w in entries)
        rows.append([(j, w / total) for j, w in entries])
    return rows


def _ref_resize_axis(x: np.ndarray, axis: int, out_len: int, scale: float, aa: bool):
    x = np.moveaxis(x.astype(np.float64), axis, 0)
    rows = _ref_contributions(x.shape[0], out_len, scale, aa)
    out = np.zeros((out_len,) + x.shape[1:])
    for i, row in enumerate(rows):
        acc = np.zeros(x.shape[1:])
        for j, w in row:
            acc = acc + w * x[j]
        out[i] = acc
    return np.moveaxis(out, 0, axis)


def _ref_imresize(x: np.ndarray, scale: float, aa: bool = True) -> np.ndarray:
    oh = math.ceil(x.shape[0] * scale - 1e-9)
    ow = math.ceil(x.shape[1] * scale - 1e-9)
    y = _ref_resize_axis(x, 0, oh, scale, aa)
    return _ref_resize_axis(y, 1, ow, scale, aa)


# --------------------------------------------------------------------------------------------
# Agreement with the loop reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.7, 2, 3, 4, 1.5, 1])
@pytest.mark.parametrize("aa", [True, False])
def test_matches_loop_reference(scale, aa):
    rng = np.random.default_rng(0)
    for shape in [(13, 9), (17, 13, 3), (5, 7, 2)]:
        x = rng.uniform(0, 255, size=shape)
        got = imresize(x, scale, antialiasing=aa)
        ref = _ref_imresize(x, scale, aa)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_contributions_match_loop_reference():
    for in_len, out_len, scale in [(10, 5, 0.5), (9, 3, 1 / 3), (4, 12, 3.0), (1, 3, 3.0)]:
        idx, w = contributions(in_len, out_len, scale, True)
        dense = np.zeros((out_len, in_len))
        np.add.at(dense, (np.arange(out_len)[:, None].repeat(idx.shape[1], 1), idx), w)
        ref = np.zeros((out_len, in_len))
        for i, row in enumerate(_ref_contributions(in_len, out_len, scale, True)):
            for j, wt in row:
                ref[i, j] += wt
        np.testing.assert_allclose(dense, ref, atol=1e-14)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-14)
        assert idx.min() >= 0 and idx.max() < in_len


def test_output_shape_argument_matches_loop_reference():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(12, 10))
    got = imresize(x, output_shape=(7, 15))
    ref = _ref_resize_axis(_ref_resize_axis(x, 0, 7, 7 / 12, True), 1, 15, 15 / 10, True)
    np.testing.assert_allclose(got, ref, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("shape", [(17, 13), (15, 11, 3), (9, 21, 1)])
def test_constant_image_stays_constant(s, shape):
    x = np.full(shape, 123.25)
    for scale in (s, 1 / s):
        y = imresize(x, scale)
        np.testing.assert_allclose(y, 123.25, atol=1e-10)


def test_output_shapes_odd_sizes():
    x = np.zeros((17, 13))
    assert imresize(x, 1 / 3).shape == (6, 5)  # ceil(17/3), ceil(13/3)
    assert imresize(x, 1 / 2).shape == (9, 7)
    assert imresize(x, 1 / 4).shape == (5, 4)
    assert imresize(x, 2).shape == (34, 26)
    assert imresize(x, 3).shape == (51, 39)
    assert imresize(np.zeros((17, 13, 3)), 1 / 3).shape == (6, 5, 3)
    assert imresize(x, output_shape=(4, 20)).shape == (4, 20)
    assert imresize(x, (0.5, 2)).shape == (9, 26)
    # no float-noise off-by-one: 510 * (1/3) is 170, 96 * (1/3) is 32
    assert imresize(np.zeros((510, 96)), 1 / 3).shape == (170, 32)


def _interior_expected_ramp(n: int, scale: float, a: float, b: float) -> np.ndarray:
    i = np.arange(1, math.ceil(n * scale - 1e-9) + 1)
    u = i / scale + 0.5 * (1 - 1 / scale)  # MATLAB's 1-based input coordinate
    return a * u + b


@pytest.mark.parametrize("s", [2, 3, 4])
def test_downscale_linear_ramp_interior_exact(s):
    h, w = 48, 36
    rows, cols = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
    x = 3.0 * rows - 2.0 * cols + 7.0  # linear in the 1-based pixel coordinates
    y = imresize(x, 1 / s)
    er = _interior_expected_ramp(h, 1 / s, 3.0, 0.0)
    ec = _interior_expected_ramp(w, 1 / s, -2.0, 7.0)
    expected = er[:, None] + ec[None, :]
    m = 3  # kernel half-width 2s input pixels = 2 output pixels, plus one
    np.testing.assert_allclose(y[m:-m, m:-m], expected[m:-m, m:-m], rtol=0, atol=1e-10)
    # the border is NOT a ramp (mirror padding bends it)
    assert np.abs(y[0] - expected[0]).max() > 1e-3


@pytest.mark.parametrize("s", [2, 3, 4])
def test_upscale_linear_ramp_interior_exact(s):
    h, w = 12, 10
    rows, cols = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
    x = 0.5 * rows + 1.25 * cols - 3.0
    y = imresize(x, s)
    er = _interior_expected_ramp(h, s, 0.5, 0.0)
    ec = _interior_expected_ramp(w, s, 1.25, -3.0)
    expected = er[:, None] + ec[None, :]
    m = 3 * s  # taps reach 2 input pixels (+ rounding) = ~3s output pixels
    np.testing.assert_allclose(y[m:-m, m:-m], expected[m:-m, m:-m], rtol=0, atol=1e-10)


def test_downscale_2x2_blocks_known_weights():
    # Antialiased x1/2: taps 0.5*cubic(0.5*d), d = 3.5, 2.5, 1.5, 0.5 -> per-pixel weights
    # [-0.01171875, -0.03515625, 0.11328125, 0.43359375] (symmetric). On an image made of 2x2
    # constant blocks each output pixel is a 5-tap filter of the block values:
    k = np.array([-0.01171875, -0.03515625 + 0.11328125, 2 * 0.43359375, 0.11328125 - 0.03515625,
                  -0.01171875])
    _, w = contributions(16, 8, 0.5, True)
    np.testing.assert_allclose(
        w[3], [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125,
               -0.03515625, -0.01171875], atol=0)
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, size=(6, 5)).astype(np.float64)
    x = np.kron(blocks, np.ones((2, 2)))
    y = imresize(x, 1 / 2)
    # mirror padding of the pixel grid is mirror padding of the block grid
    p = np.pad(blocks, 2, mode="symmetric")
    expected = np.zeros_like(blocks)
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            expected[i, j] = k @ p[i:i + 5, j:j + 5] @ k
    np.testing.assert_allclose(y, expected, atol=1e-10)


def test_numpy_and_torch_paths_agree():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(2, 19, 14, 3))
    t = torch.from_numpy(x).permute(0, 3, 1, 2)  # (B, C, H, W)
    for scale in (1 / 3, 1 / 2, 2, 3, 0.8):
        ref = np.stack([imresize(img, scale) for img in x])
        got = imresize(t, scale)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), ref, atol=1e-12)
    got32 = imresize(t.float(), 1 / 4)
    assert got32.dtype == torch.float32
    ref = np.stack([imresize(img, 1 / 4) for img in x])
    np.testing.assert_allclose(got32.permute(0, 2, 3, 1).numpy(), ref, atol=1e-5)
    # 2-D tensor and output_shape
    g = imresize(torch.from_numpy(x[0, ..., 0]), output_shape=(5, 30))
    np.testing.assert_allclose(g.numpy(), imresize(x[0, ..., 0], output_shape=(5, 30)),
                               atol=1e-12)


def test_dtypes_numpy():
    x = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert imresize(x, 0.5).dtype == np.float64
    assert imresize(x.astype(np.float32), 0.5).dtype == np.float32
    np.testing.assert_allclose(imresize(x, 0.5), imresize(x.astype(np.float64), 0.5))


def test_round_half_away():
    np.testing.assert_array_equal(
        round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999, 254.5])),
        [1, 2, 3, -1, -2, 0, 255],
    )


def test_imresize_uint8_rounds_and_clips():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
    for scale in (1 / 2, 1 / 3, 2, 4):
        y = imresize_uint8(x, scale)
        assert y.dtype == np.uint8
        f = imresize(x.astype(np.float64), scale)
        np.testing.assert_array_equal(y, np.clip(np.sign(f) * np.floor(np.abs(f) + 0.5), 0, 255))
    # overshoot on a hard edge is clipped, not wrapped
    edge = np.zeros((8, 8), dtype=np.uint8)
    edge[:, 4:] = 255
    up = imresize_uint8(edge, 4)
    f = imresize(edge, 4)
    assert f.max() > 255 and f.min() < 0
    assert up.max() == 255 and up.min() == 0
    with pytest.raises(ValueError, match="uint8"):
        imresize_uint8(x.astype(np.float32), 0.5)


def test_bicubic_degrade():
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, size=(24, 18, 3), dtype=np.uint8)
    lr = bicubic_degrade(hr, 3)
    assert lr.shape == (8, 6, 3) and lr.dtype == np.uint8
    np.testing.assert_array_equal(lr, imresize_uint8(hr, 1 / 3))
    with pytest.raises(ValueError, match="modcrop"):
        bicubic_degrade(hr, 4)
    with pytest.raises(ValueError, match="scale"):
        bicubic_degrade(hr, 0)


@pytest.mark.parametrize("bad", [0, -2, 0.0, float("nan"), float("inf")])
def test_bad_scale_raises(bad):
    with pytest.raises(ValueError, match="scale"):
        imresize(np.zeros((4, 4)), bad)
    with pytest.raises(ValueError, match="scale"):
        imresize(torch.zeros(1, 4, 4), bad)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        imresize(np.zeros((0, 5)), 2)
    with pytest.raises(ValueError, match="empty"):
        imresize(torch.zeros(2, 0, 5), 2)
    with pytest.raises(ValueError):
        imresize(np.zeros(5), 2)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)))  # neither scale nor output_shape
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))
    with pytest.raises(ValueError, match="output_shape"):
        imresize(np.zeros((4, 4)), output_shape=(0, 3))
