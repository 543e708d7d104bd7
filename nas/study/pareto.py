"""Pareto fronts of (PSNR dB, GFLOPs) studies: pure functions plus a matplotlib renderer.

Everything here works on plain numbers: a point is ``(psnr_db, gflops)`` - PSNR to maximise, in
dB; GFLOPs (1e9 FLOPs, FLOPs = 2 x MACs) to minimise. Functions take ``directions`` so they also
serve other objective pairs; internally every objective is turned into one to minimise.

* :func:`nondominated_ranks` - fast non-dominated sorting (rank 0 = the Pareto front);
* :func:`pareto_mask` - which points are on the front;
* :func:`hypervolume_2d` - the area dominated by the front and bounded by a reference point;
* :func:`default_reference_point` - the reference point used when none is configured;
* :func:`knee_index` - the front's knee (largest distance to the chord between the extremes);
* :func:`plot_front` - PNG of all trials, front highlighted, dominated trials grey, baselines marked
  (matplotlib is imported only there).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

#: objective directions of an acla-nas study: PSNR (dB) up, GFLOPs down
DIRECTIONS = ("maximize", "minimize")


def _as_min(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[tuple[float, ...]]:
    signs = []
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {d!r}")
        signs.append(-1.0 if d == "maximize" else 1.0)
    out = []
    for p in points:
        if len(p) != len(signs):
            raise ValueError(f"point {tuple(p)} has {len(p)} values, expected {len(signs)}")
        out.append(tuple(s * float(v) for s, v in zip(signs, p)))
    return out


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (both to minimise): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Sequence[float]],
                       directions: Sequence[str] = DIRECTIONS) -> list[int]:
    """Non-dominated sorting (Deb et al. 2002): the front index of every point.

    Args:
        points: objective vectors, e.g. ``[(psnr_db, gflops), ...]``.
        directions: ``"maximize"``/``"minimize"`` per objective.

    Returns:
        ``ranks[i]``: 0 for points on the Pareto front, 1 for the front of the rest, and so on.
        Duplicated points share a rank.

    Raises:
        ValueError: unknown direction, a point of the wrong length, or a NaN value.
    """
    pts = _as_min(points, directions)
    if any(math.isnan(v) for p in pts for v in p):
        raise ValueError("objective values must not be NaN")
    n = len(pts)
    dominated_by = [0] * n
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(pts[i], pts[j]):
                dominates[i].append(j)
                dominated_by[j] += 1
            elif _dominates(pts[j], pts[i]):
                dominates[j].append(i)
                dominated_by[i] += 1
    ranks = [-1] * n
    current = [i for i in range(n) if dominated_by[i] == 0]
    rank = 0
    while current:
        nxt = []
        for i in current:
            ranks[i] = rank
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = nxt
        rank += 1
    return ranks


def pareto_mask(points: Sequence[Sequence[float]],
                directions: Sequence[str] = DIRECTIONS) -> list[bool]:
    """``True`` for the points no other point dominates (see :func:`nondominated_ranks`)."""
    return [r == 0 for r in nondominated_ranks(points, directions)]


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float],
                   directions: Sequence[str] = DIRECTIONS) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (two objectives).

    For a PSNR/GFLOPs study the unit is dB x GFLOPs. Points that do not strictly improve on the
    reference point in both objectives add nothing.

    Args:
        points: ``[(f1, f2), ...]``, e.g. ``(psnr_db, gflops)``.
        reference: the reference point ``(r1, r2)``, worse than the interesting points in both
            objectives (e.g. a PSNR below and a GFLOPs above every trial).
        directions: per objective.

    Returns:
        The hypervolume (>= 0); 0 for no point.

    Raises:
        ValueError: not two objectives, unknown direction, NaN values.
    """
    if len(directions) != 2 or len(reference) != 2:
        raise ValueError("hypervolume_2d needs exactly two objectives")
    pts = _as_min(points, directions)
    (r1, r2), = _as_min([reference], directions)
    if any(math.isnan(v) for p in pts for v in p) or math.isnan(r1) or math.isnan(r2):
        raise ValueError("objective values must not be NaN")
    inside = [p for p in pts if p[0] < r1 and p[1] < r2]
    return _union_area(inside, r1, r2)


def _union_area(pts: list[tuple[float, float]], r1: float, r2: float) -> float:
    """Area of the union of boxes ``[p1, r1] x [p2, r2]`` (sweep over f1, running min of f2)."""
    area = 0.0
    front: list[tuple[float, float]] = []
    best = r2
    for f1, f2 in sorted(pts):
        if f2 < best:
            front.append((f1, f2))
            best = f2
    for k, (f1, f2) in enumerate(front):
        nxt = front[k + 1][0] if k + 1 < len(front) else r1
        area += (nxt - f1) * (r2 - f2)
    return area


def default_reference_point(points: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Reference point used when none is configured, for ``(psnr_db, gflops)`` points.

    ``(min PSNR - 0.1 dB, max GFLOPs x 1.1)`` over the given points, so every point contributes.

    Raises:
        ValueError: no point.
    """
    if not points:
        raise ValueError("no point to derive a reference point from")
    psnr = min(float(p[0]) for p in points)
    gflops = max(float(p[1]) for p in points)
    return (round(psnr - 0.1, 4), float(f"{gflops * 1.1:.6g}"))


def knee_index(points: Sequence[Sequence[float]],
               directions: Sequence[str] = DIRECTIONS) -> int:
    """Index of the knee of a front: the point farthest from the chord between its extremes.

    Objectives are normalised to [0, 1] over ``points`` first (so dB and GFLOPs weigh alike).
    With one or two points (no interior), the point nearest to the ideal corner is returned.
    Dominated points in ``points`` are ignored.

    Args:
        points: objective vectors, usually the front.
        directions: per objective (two objectives).

    Returns:
        An index into ``points``.

    Raises:
        ValueError: no point, or not two objectives.
    """
    if not points:
        raise ValueError("knee of an empty front")
    if len(directions) != 2:
        raise ValueError("knee_index needs exactly two objectives")
    pts = _as_min(points, directions)
    mask = pareto_mask(points, directions)
    idx = [i for i in range(len(pts)) if mask[i]]
    lo = [min(pts[i][d] for i in idx) for d in range(2)]
    hi = [max(pts[i][d] for i in idx) for d in range(2)]
    span = [(h - x) or 1.0 for x, h in zip(lo, hi)]
    norm = {i: tuple((pts[i][d] - lo[d]) / span[d] for d in range(2)) for i in idx}
    a = min(idx, key=lambda i: (norm[i][0], norm[i][1]))  # best in objective 1
    b = min(idx, key=lambda i: (norm[i][1], norm[i][0]))  # best in objective 2
    (ax, ay), (bx, by) = norm[a], norm[b]

    def ideal_dist(i: int) -> float:
        return math.hypot(*norm[i])

    if len(idx) <= 2 or (ax, ay) == (bx, by):
        return min(idx, key=lambda i: (ideal_dist(i), i))

    def side(x: float, y: float) -> float:
        # cross product (b - a) x (p - a): the sign tells the side of the chord a-b
        return (bx - ax) * (y - ay) - (by - ay) * (x - ax)

    toward_ideal = 1.0 if side(0.0, 0.0) > 0 else -1.0
    # distance to the chord on the side of the ideal point (0, 0); |b - a| is a common factor
    return max(idx, key=lambda i: (toward_ideal * side(*norm[i]), -ideal_dist(i), -i))


# ------------------------------------------------------------------------------------ rendering
def plot_front(path: str | os.PathLike, points: Sequence[Sequence[float]], on_front: Sequence[bool],
               *, labels: Sequence[str] | None = None, errors: Sequence[float] | None = None,
               ties: Sequence[bool] | None = None, reference: Sequence[bool] | None = None,
               reference_point: Sequence[float] | None = None, knee: int | None = None,
               title: str = "", xlabel: str = "GFLOPs", ylabel: str = "PSNR (dB)",
               error_label: str = "+-1 standard error") -> Path:
    """Scatter ``(psnr_db, gflops)`` points as GFLOPs (x) against PSNR (y) and write a PNG.

    The front is drawn in colour and joined by a step line (a front point that is a tie with the
    next cheaper one hollow), dominated points in grey, reference architectures as labelled
    stars, every point with its error bar, the knee circled, and the hypervolume's reference
    point as a cross.

    Args:
        path: output PNG (written atomically).
        points: ``[(psnr_db, gflops), ...]``, one per architecture.
        on_front: per point, whether it is on the front.
        labels: per point, a short annotation (e.g. a trial number or a reference name).
        errors: per point, the half-height of its error bar (dB), e.g. a standard error.
        ties: per point, whether it is within noise of the next cheaper front point.
        reference: per point, whether it is a reference architecture.
        reference_point: ``(psnr_db, gflops)`` of the hypervolume's reference point.
        knee: index into ``points`` of the knee, circled.
        title: plot title; axis labels carry the units.
        error_label: legend entry of the error bars.

    Returns:
        The path written.

    Raises:
        UsageError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        from nas.errors import UsageError

        raise UsageError("--plot: matplotlib is required (pip install matplotlib)") from None
    from nas.io import atomic_write

    n = len(points)
    errors = list(errors) if errors is not None else [0.0] * n
    ties = list(ties) if ties is not None else [False] * n
    reference = list(reference) if reference is not None else [False] * n
    fig, ax = plt.subplots(figsize=(7.2, 4.9), dpi=120)
    xs = [p[1] for p in points]
    ys = [p[0] for p in points]
    if any(errors):
        ax.errorbar(xs, ys, yerr=errors, fmt="none", ecolor="0.55", elinewidth=0.8, capsize=2,
                    zorder=1, label=error_label)
    front = sorted(i for i in range(n) if on_front[i])
    front.sort(key=lambda i: xs[i])
    dom = [i for i in range(n) if not on_front[i] and not reference[i]]
    if dom:
        ax.scatter([xs[i] for i in dom], [ys[i] for i in dom], s=22, c="0.7",
                   label="dominated", zorder=2)
    if front:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", c="tab:blue",
                lw=1.2, alpha=0.6, zorder=3)
        solid = [i for i in front if not ties[i] and not reference[i]]
        hollow = [i for i in front if ties[i] and not reference[i]]
        if solid:
            ax.scatter([xs[i] for i in solid], [ys[i] for i in solid], s=40, c="tab:blue",
                       edgecolors="k", linewidths=0.5, label="Pareto front", zorder=4)
        if hollow:
            ax.scatter([xs[i] for i in hollow], [ys[i] for i in hollow], s=40,
                       facecolors="white", edgecolors="tab:blue", linewidths=1.2,
                       label="front, within noise of a cheaper point", zorder=4)
    refs = [i for i in range(n) if reference[i]]
    if refs:
        ax.scatter([xs[i] for i in refs], [ys[i] for i in refs], marker="*", s=170,
                   c=["tab:orange" if on_front[i] else "moccasin" for i in refs], edgecolors="k",
                   linewidths=0.5, label="reference architectures", zorder=5)
    if labels is not None:
        for i in range(n):
            if on_front[i] or reference[i]:
                ax.annotate(str(labels[i]), (xs[i], ys[i]), textcoords="offset points",
                            xytext=(5, 4), fontsize=7,
                            color="tab:orange" if reference[i] else "tab:blue")
    if knee is not None and 0 <= knee < n:
        ax.scatter([xs[knee]], [ys[knee]], s=190, facecolors="none", edgecolors="tab:red",
                   linewidths=1.5, label="knee", zorder=6)
    if reference_point is not None:
        ax.scatter([reference_point[1]], [reference_point[0]], marker="x", s=50, c="k",
                   label="hypervolume reference point", zorder=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if n:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    plt.close(fig)
    return path
