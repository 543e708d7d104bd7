"""Forward+backward time and peak memory of the attention operators versus feature-map size.

Runs every registered operator (ACLA with 2 references x 9 keys, RELA, LCoA, full non-local NLA)
on one ``C x s x s`` feature map (batch 1, 64 channels by default) for s in
32, 48, 64, 96, 128, 192, 256, in training mode, and writes

* ``results/bench/attention_scaling.csv`` with columns ``op, size, hw, device, fwd_bwd_ms,
  peak_mem_mb, analytic_gflops, ratio_time_vs_nla, ratio_mem_vs_nla, note``;
* ``results/bench/attention_scaling.png``: log-log time and memory versus ``H·W``;

and prints the log-log slope of time versus ``H·W`` per operator and the 128x128 ratios
ACLA/NLA and RELA/NLA.

Method:

* Time: one forward + ``backward(grad)`` of a fixed random output gradient (parameter gradients
  cleared before each step), ``--warmup`` untimed steps, then the median of ``--repeats`` timed
  steps (3 when one step takes longer than 5 s), with ``torch.cuda.synchronize`` on CUDA.
* Peak memory: the peak of the *extra* tensor memory live during one forward+backward step (the
  inputs, weights and the output gradient are allocated before and not counted; activations,
  saved tensors and the new parameter gradients are). On CUDA it is
  ``torch.cuda.max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats``.
  On the CPU it comes from ``torch.profiler.profile(profile_memory=True)``: every tensor
  allocation and free of the CPU allocator is recorded as a ``[memory]`` event with a signed
  byte count; the peak is the maximum of their running sum in time order. (``tracemalloc`` does
  not see tensor storage, which PyTorch allocates outside the Python allocator.)
* NLA materialises ``N x N`` matrices (``N = H·W``); a forward+backward step keeps about four of
  them alive at once (scores, softmax output, and their two gradients). Sizes where that estimate
  ``4·N²·4 bytes`` exceeds ``--mem-cap-gib`` (default 8 GiB) are skipped with the reason written
  in the ``note`` column.
* ``analytic_gflops`` is the operator's forward FLOPs (= 2 x MACs) from ``Op.flops``.

* CPU threads: PyTorch's default unless ``--threads N``. On a CPU shared with other jobs,
  ``--threads 1`` gives far steadier timings (multi-threaded kernels stall when one of their
  threads is descheduled); the thread count is written in the ``device`` column.

Usage::

    python experiments/bench/attention_scaling.py [--device auto|cpu|cuda] [--threads N]
        [--sizes 32 64 ...] [--ops acla nla ...] [--mem-cap-gib 8] [--out results/bench]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.timing import peak_memory_mb, time_step  # noqa: E402
from search_spaces.operators import OPERATORS  # noqa: E402

#: operator -> (num_refs, constructor config) benchmarked.
OPS: dict[str, tuple[int, dict]] = {
    "acla": (2, {"keys": [9, 9], "adaptive": True}),
    "rela": (0, {"heads": 4, "dw_kernel": 5}),
    "lcoa": (0, {"reduction": 4, "n_clusters": 128, "window": 384}),
    "nla": (0, {"reduction": 2}),
}
SIZES = [32, 48, 64, 96, 128, 192, 256]
COLUMNS = ["op", "size", "hw", "device", "fwd_bwd_ms", "peak_mem_mb", "analytic_gflops",
           "ratio_time_vs_nla", "ratio_mem_vs_nla", "note"]
NLA_LIVE_MATRICES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mem-cap-gib", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (torch.set_num_threads); 0 keeps PyTorch's default")
    return p.parse_args(argv)


def build(name: str, channels: int, size: int, device: torch.device):
    """The module, its inputs and a fixed output gradient; returns ``(clear, step)``: ``clear``
    drops every gradient (inputs and parameters), ``step`` runs ``clear`` + forward + backward."""
    num_refs, cfg = OPS[name]
    module = OPERATORS.get(name)(channels, num_refs, **cfg).to(device).train()
    with torch.no_grad():  # move the projection off zero so every branch carries gradient
        module.proj.weight.normal_(0.0, 0.02)
    x = torch.randn(1, channels, size, size, device=device, requires_grad=True)
    refs = [torch.randn_like(x).requires_grad_(True) for _ in range(num_refs)]
    grad = torch.randn_like(x)

    def clear() -> None:
        for t in [x, *refs, *module.parameters()]:
            t.grad = None

    def step() -> None:
        clear()
        module(x, refs).backward(grad)

    return clear, step


def nla_skip_reason(size: int, cap_gib: float) -> str | None:
    """Why NLA is skipped at ``size`` (``None`` when it fits the cap)."""
    n = size * size
    need = NLA_LIVE_MATRICES * n * n * 4
    if need > cap_gib * 2**30:
        return (f"skipped: {NLA_LIVE_MATRICES} live {n}x{n} fp32 matrices = "
                f"{need / 2**30:.1f} GiB > cap {cap_gib:g} GiB")
    return None


def slope(rows: list[dict], op: str, min_hw: int = 0) -> float:
    """Least-squares slope of log(time) versus log(H·W) over the measured rows of ``op``."""
    pts = [(math.log(r["hw"]), math.log(r["fwd_bwd_ms"])) for r in rows
           if r["op"] == op and r["fwd_bwd_ms"] != "" and r["hw"] >= min_hw]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def plot(rows: list[dict], path: Path) -> None:
    """Log-log time and memory versus H·W, one line per operator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for op in dict.fromkeys(r["op"] for r in rows):
        pts = [r for r in rows if r["op"] == op and r["fwd_bwd_ms"] != ""]
        hw = [r["hw"] for r in pts]
        axes[0].plot(hw, [r["fwd_bwd_ms"] for r in pts], "o-", label=op)
        axes[1].plot(hw, [r["peak_mem_mb"] for r in pts], "o-", label=op)
    device = rows[0]["device"] if rows else ""
    for ax, ylabel in zip(axes, ["forward+backward time (ms)", "peak extra memory (MiB)"]):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("H·W (pixels)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Attention operators, 64 channels, batch 1, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the CSV and PNG, print the summary."""
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu {torch.get_num_threads()} thread(s)")
    rows: list[dict] = []
    t_start = time.perf_counter()
    for size in args.sizes:
        for op in args.ops:
            num_refs, cfg = OPS[op]
            flops_cfg = {**cfg, "num_refs": num_refs} if num_refs else cfg
            gflops = OPERATORS.get(op).flops(args.channels, size, size, flops_cfg) / 1e9
            row = {"op": op, "size": size, "hw": size * size, "device": dev_name,
                   "fwd_bwd_ms": "", "peak_mem_mb": "", "analytic_gflops": round(gflops, 4),
                   "ratio_time_vs_nla": "", "ratio_mem_vs_nla": "", "note": ""}
            reason = nla_skip_reason(size, args.mem_cap_gib) if op == "nla" else None
            if reason:
                row["note"] = reason
            else:
                clear, step = build(op, args.channels, size, device)
                row["fwd_bwd_ms"] = round(time_step(step, device, args.warmup, args.repeats), 3)
                row["peak_mem_mb"] = round(peak_memory_mb(step, clear, device), 2)
                del clear, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"{op:5s} {size:4d}^2  time {row['fwd_bwd_ms']!s:>10} ms  "
                  f"mem {row['peak_mem_mb']!s:>9} MiB  {gflops:8.3f} GFLOPs  {row['note']}",
                  flush=True)
    for row in rows:
        ref = next((r for r in rows if r["op"] == "nla" and r["size"] == row["size"]), None)
        if ref and ref["fwd_bwd_ms"] != "" and row["fwd_bwd_ms"] != "":
            row["ratio_time_vs_nla"] = round(row["fwd_bwd_ms"] / ref["fwd_bwd_ms"], 4)
            if ref["peak_mem_mb"]:
                row["ratio_mem_vs_nla"] = round(row["peak_mem_mb"] / ref["peak_mem_mb"], 4)
    csv_path = args.out / "attention_scaling.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    png_path = args.out / "attention_scaling.png"
    plot(rows, png_path)
    print(f"\nwrote {csv_path} and {png_path} ({time.perf_counter() - t_start:.0f} s, {dev_name})")
    print("slope of log(time) vs log(H·W): all sizes / sizes >= 64x64")
    for op in args.ops:
        print(f"  {op:5s} {slope(rows, op):6.3f} / {slope(rows, op, 64 * 64):6.3f}")
    for op in ("acla", "rela", "lcoa"):
        r = next((r for r in rows if r["op"] == op and r["size"] == 128), None)
        if r and r["ratio_time_vs_nla"] != "":
            print(f"128x128 {op}/nla: time {r['ratio_time_vs_nla']:.4f}  "
                  f"memory {r['ratio_mem_vs_nla']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
