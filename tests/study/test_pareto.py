"""Pure Pareto functions: non-dominated sort, 2-D hypervolume (vs a brute-force grid), knee."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nas.study.pareto import (
    default_reference_point,
    hypervolume_2d,
    knee_index,
    nondominated_ranks,
    pareto_mask,
    plot_front,
)


def _brute_ranks(points, directions):
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    pts = np.asarray(points, dtype=float) * sign
    ranks = [-1] * len(pts)
    left = set(range(len(pts)))
    r = 0
    while left:
        front = [i for i in left if not any(
            np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i]) for j in left if j != i)]
        for i in front:
            ranks[i] = r
        left -= set(front)
        r += 1
    return ranks


def test_ranks_hand_made_front():
    # (psnr dB up, gflops down)
    pts = [(30.0, 2.0), (31.0, 3.0), (29.0, 1.0), (29.5, 2.5), (28.0, 3.5), (30.0, 2.0)]
    ranks = nondominated_ranks(pts)
    assert ranks == [0, 0, 0, 1, 2, 0]  # (29.5, 2.5) is dominated by (30, 2); duplicates share rank
    assert pareto_mask(pts) == [True, True, True, False, False, True]


@pytest.mark.parametrize("directions", [("maximize", "minimize"), ("minimize", "minimize"),
                                        ("maximize", "maximize", "minimize")])
def test_ranks_match_brute_force(directions):
    rng = random.Random(0)
    for _ in range(20):
        pts = [tuple(rng.choice([0, 1, 2, 3, 4]) for _ in directions) for _ in range(rng.randint(1, 15))]
        assert nondominated_ranks(pts, directions) == _brute_ranks(pts, directions)


def test_ranks_errors():
    with pytest.raises(ValueError, match="direction"):
        nondominated_ranks([(1, 2)], ("up", "down"))
    with pytest.raises(ValueError, match="NaN"):
        nondominated_ranks([(float("nan"), 1.0)])
    with pytest.raises(ValueError, match="expected 2"):
        nondominated_ranks([(1.0, 2.0, 3.0)])
    assert nondominated_ranks([]) == []


def _grid_hv(points, ref, n=400):
    """Brute force: the fraction of grid cell centres of the box [ref_psnr, max psnr] x
    [min gflops, ref_gflops] that some point dominates, times the box area."""
    r1, r2 = ref
    top = max(p[0] for p in points)
    bot = min(p[1] for p in points)
    ys = np.linspace(r1, top, n, endpoint=False) + (top - r1) / n / 2  # PSNR axis
    xs = np.linspace(bot, r2, n, endpoint=False) + (r2 - bot) / n / 2  # GFLOPs axis
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    covered = np.zeros_like(Y, dtype=bool)
    for p1, p2 in points:
        covered |= (Y <= p1) & (X >= p2)
    return covered.mean() * (top - r1) * (r2 - bot)


def test_hypervolume_hand_made():
    # maximize psnr, minimize gflops; ref (28, 4)
    pts = [(30.0, 2.0), (31.0, 3.0), (29.0, 1.0)]
    # boxes: [28,30]x[2,4] area 4, [28,31]x[3,4] area 3, [28,29]x[1,4] area 3; union:
    # psnr 28..29: gflops 1..4 -> 3 ; 29..30: 2..4 -> 2 ; 30..31: 3..4 -> 1  => 6
    assert hypervolume_2d(pts, (28.0, 4.0)) == pytest.approx(6.0)
    # dominated and outside points add nothing
    assert hypervolume_2d(pts + [(29.5, 2.5), (27.0, 0.5), (32.0, 5.0)], (28.0, 4.0)) == \
        pytest.approx(6.0)
    assert hypervolume_2d([], (28.0, 4.0)) == 0.0
    assert hypervolume_2d([(28.0, 1.0)], (28.0, 4.0)) == 0.0  # on the reference: no strict gain


def test_hypervolume_matches_grid_count():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pts = [(float(a), float(b)) for a, b in zip(rng.uniform(28, 32, 8), rng.uniform(0.5, 3, 8))]
        ref = (28.0, 3.0)
        inside = [p for p in pts if p[0] > ref[0] and p[1] < ref[1]]
        exact = hypervolume_2d(pts, ref)
        approx = _grid_hv(inside, ref, n=600)
        assert exact == pytest.approx(approx, rel=0.01)


def test_hypervolume_minimize_minimize_and_errors():
    assert hypervolume_2d([(1.0, 1.0)], (2.0, 3.0), ("minimize", "minimize")) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two objectives"):
        hypervolume_2d([(1.0, 1.0, 1.0)], (2.0, 2.0, 2.0), ("minimize",) * 3)


def test_default_reference_point():
    assert default_reference_point([(30.0, 2.0), (28.5, 4.0)]) == (28.4, pytest.approx(4.4))
    with pytest.raises(ValueError):
        default_reference_point([])


def test_knee():
    # a convex front with an obvious knee at (30, 1.0)
    front = [(26.0, 0.1), (30.0, 1.0), (30.5, 4.0), (30.6, 8.0)]
    assert knee_index(front) == 1
    # dominated points are ignored
    assert knee_index(front + [(29.0, 2.0)]) == 1
    assert knee_index([(30.0, 1.0)]) == 0
    # two points: the one nearest to the ideal corner after normalisation (a tie -> first)
    assert knee_index([(30.0, 1.0), (31.0, 2.0)]) == 0
    with pytest.raises(ValueError):
        knee_index([])


def test_plot_front(tmp_path):
    pts = [(30.0, 2.0), (31.0, 3.0), (29.0, 1.0), (29.5, 2.5), (29.2, 0.9)]
    path = plot_front(tmp_path / "front.png", pts, pareto_mask(pts),
                      labels=["#0", "#1", "#2", "#3", "no_attention"],
                      errors=[0.1, 0.2, 0.05, 0.1, 0.1], ties=[False, True, False, False, False],
                      reference=[False, False, False, False, True], reference_point=(28.0, 4.0),
                      knee=0, title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
