"""Forward+backward time, peak memory and GFLOP/s of the attention operators versus map size,
and the time of one supernet search step with ACLA at every insertion point.

Table 1 runs every registered operator (ACLA with 2 references x ``--keys`` keys on its default
path - the fused C++ kernel on the CPU, :mod:`search_spaces.operators.acla_fused`, the path named
in the ``note`` column - RELA, LCoA, full non-local NLA) plus the same ACLA module on its two
other paths: ``acla_sparse`` (sparse-matrix products, ``ACLA.sampler = "sparse"``, the default
before the fused kernel) and ``acla_grid_sample`` (``F.grid_sample`` + ``bmm``, the first
implementation), on one ``C x s x s`` feature map (batch 1, 64 channels by default) for s in
32, 48, 64, 96, 128, 192, 256, in training mode, and writes

* ``results/bench/attention_scaling.csv`` with columns ``op, size, hw, device, keys,
  fwd_bwd_ms, peak_mem_mb, analytic_gflops, gflops_per_s, gflops_per_s_rule,
  ratio_time_vs_nla, ratio_mem_vs_nla, ratio_time_vs_rela, note``;
* ``results/bench/attention_scaling.png``: log-log time and memory versus ``H·W``;

and prints the log-log slope of time versus ``H·W`` per operator and the 128x128 ratios.

Table 2 (:func:`search_step_rows`, skipped with ``--no-search-step``) times one step of the
supernet search on each ``--search-config`` space (default: ``experiments/search/sr_x2_small.yaml``,
edsr-small, SR x2, batch 8, HR patch 48, ops [skip, acla] at all 8 points, max_refs 2, keys
[0, 2, 4, 9] - the space of the quickstart before 0.2 - and ``experiments/quickstart.yaml``,
edsr-tiny, colour denoising, batch 8, patch 32, ACLA at b01-b03 reading 1 layer, keys [0, 4, 9],
dilation 4): one
weight step on a batch, then one alpha step on another batch, as the search does (L1 loss;
alpha step: L1 + linear FLOPs penalty on E[F]; Adam for both), with the architecture pinned:
every point ``skip`` (the plain backbone) versus ACLA at every point reading ``k`` keys from every
reference, for each ``k > 0`` of the space, once per ACLA path of ``--step-samplers`` (default
``auto``; rows of another path are named ``acla_everywhere_k<k>_<path>``). It writes
``results/bench/search_step.csv`` with columns ``config, arch, acla_sampler, keys_per_ref, device,
step_ms, ratio_vs_skip, peak_mem_mb, gflops_720p`` (the last: FLOPs of the pinned network per
image at the cost model's reference size, a 1280x720 output, from ``Supernet.cost.exact``).

Method:

* Time (table 1): one forward + ``backward(grad)`` of a fixed random output gradient (parameter
  gradients cleared before each step), ``--warmup`` untimed rounds, then the median of
  ``--repeats`` timed steps (3 when one step takes longer than 5 s), with
  ``torch.cuda.synchronize`` on CUDA. The operators of one size are timed in interleaved
  rounds (one step of each per round), so that a slow phase of a shared machine hits all of
  them alike and the ratios at a size stay meaningful.
* Time (table 2): the architectures are timed in interleaved rounds (one step of each per round,
  ``--step-repeats`` rounds after 2 warm-up rounds), median per architecture, so that a slow
  phase of a shared machine hits all of them alike. Inputs are uniform random images of the
  configured batch and patch size (the data set does not change the cost). The pinned decisions
  come from :meth:`nas.engine.supernet.Supernet.decisions` plus straight-through gate weights from
  ``softmax(alpha)`` (value 1), so alpha receives the same kind of gradient as in a search.
* Peak memory: the peak of the *extra* tensor memory live during one step (the inputs, weights
  and the output gradient are allocated before and not counted; activations, saved tensors and
  the new parameter gradients are). On CUDA it is
  ``torch.cuda.max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats``.
  On the CPU it comes from ``torch.profiler.profile(profile_memory=True)``: every tensor
  allocation and free of the CPU allocator is recorded as a ``[memory]`` event with a signed
  byte count; the peak is the maximum of their running sum in time order. (``tracemalloc`` does
  not see tensor storage, which PyTorch allocates outside the Python allocator.)
* NLA materialises ``N x N`` matrices (``N = H·W``); a forward+backward step keeps about four of
  them alive at once (scores, softmax output, and their two gradients). Sizes where that estimate
  ``4·N²·4 bytes`` exceeds ``--mem-cap-gib`` (default 8 GiB) are skipped with the reason written
  in the ``note`` column.
* ``analytic_gflops`` is the operator's forward FLOPs (= 2 x MACs) from ``Op.flops``, in GFLOPs
  (1e9 FLOPs). ``gflops_per_s`` is the achieved rate under the convention written in
  ``gflops_per_s_rule``: forward+backward FLOPs are taken as 3 x the forward analytic FLOPs,
  divided by ``fwd_bwd_ms``. For ACLA the analytic count charges every slot (the supernet's
  cost convention), while the sparse path samples only the kept keys inside the map.
* CPU threads: PyTorch's default unless ``--threads N``. On a CPU shared with other jobs,
  ``--threads 1`` gives far steadier timings (multi-threaded kernels stall when one of their
  threads is descheduled); the thread count is written in the ``device`` column.

Usage::

    python experiments/bench/attention_scaling.py [--device auto|cpu|cuda] [--threads N]
        [--sizes 32 64 ...] [--ops acla nla ...] [--keys 9] [--mem-cap-gib 8]
        [--no-operators] [--no-search-step]
        [--search-config CONFIG ...] [--out results/bench]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.timing import interleaved_ms, peak_memory_mb, sync, write_csv  # noqa: E402
from search_spaces.operators import ACLA, OPERATORS  # noqa: E402
from search_spaces.operators.acla import SAMPLERS  # noqa: E402

#: benchmark name -> (registered operator, num_refs, constructor config, ACLA sampler or None).
#: ACLA's ``keys`` are set from ``--keys``.
OPS: dict[str, tuple[str, int, dict, str | None]] = {
    "acla": ("acla", 2, {"adaptive": True}, "auto"),
    "acla_sparse": ("acla", 2, {"adaptive": True}, "sparse"),
    "acla_grid_sample": ("acla", 2, {"adaptive": True}, "grid_sample"),
    "rela": ("rela", 0, {"heads": 4, "dw_kernel": 5}, None),
    "lcoa": ("lcoa", 0, {"reduction": 4, "n_clusters": 128, "window": 384}, None),
    "nla": ("nla", 0, {"reduction": 2}, None),
}
SIZES = [32, 48, 64, 96, 128, 192, 256]
COLUMNS = ["op", "size", "hw", "device", "keys", "fwd_bwd_ms", "peak_mem_mb", "analytic_gflops",
           "gflops_per_s", "gflops_per_s_rule", "ratio_time_vs_nla", "ratio_mem_vs_nla",
           "ratio_time_vs_rela", "note"]
STEP_COLUMNS = ["config", "arch", "acla_sampler", "keys_per_ref", "device", "step_ms", "ratio_vs_skip",
                "peak_mem_mb", "gflops_720p"]
#: the stated convention for achieved GFLOP/s (written into the CSV)
GFLOPS_RULE = "3 x forward analytic FLOPs (FLOPs = 2 x MACs) / fwd_bwd_ms"
FWD_BWD_FACTOR = 3
NLA_LIVE_MATRICES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--keys", type=int, default=9, help="ACLA keys per reference (2 references)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mem-cap-gib", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (torch.set_num_threads); 0 keeps PyTorch's default")
    p.add_argument("--operators", action=argparse.BooleanOptionalAction, default=True,
                   help="table 1, the operators (--no-operators: only the search step)")
    p.add_argument("--search-step", action=argparse.BooleanOptionalAction, default=True,
                   help="also write table 2 (search_step.csv)")
    p.add_argument("--search-config", type=Path, nargs="+",
                   default=[ROOT / "experiments" / "search" / "sr_x2_small.yaml",
                            ROOT / "experiments" / "quickstart.yaml"])
    p.add_argument("--step-repeats", type=int, default=9)
    p.add_argument("--step-samplers", nargs="+", default=["auto"],
                   choices=list(SAMPLERS),
                   help="ACLA paths timed in table 2 (rows of a path other than auto are named "
                        "acla_everywhere_k<k>_<path>)")
    return p.parse_args(argv)


def op_config(name: str, keys: int) -> tuple[str, int, dict, str | None]:
    """``(operator, num_refs, config, sampler)`` of benchmark entry ``name``."""
    op, num_refs, cfg, sampler = OPS[name]
    if op == "acla":
        cfg = {**cfg, "keys": [keys] * num_refs}
    return op, num_refs, cfg, sampler


def build(name: str, channels: int, size: int, device: torch.device, keys: int = 9):
    """The module, its inputs and a fixed output gradient; returns ``(clear, step)``: ``clear``
    drops every gradient (inputs and parameters), ``step`` runs ``clear`` + forward + backward."""
    op, num_refs, cfg, sampler = op_config(name, keys)
    module = OPERATORS.get(op)(channels, num_refs, **cfg).to(device).train()
    if sampler is not None:
        module.sampler = ACLA.resolve_sampler(sampler, device)
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
        style = "o--" if op == "acla_grid_sample" else "o-"
        axes[0].plot(hw, [r["fwd_bwd_ms"] for r in pts], style, label=op)
        axes[1].plot(hw, [r["peak_mem_mb"] for r in pts], style, label=op)
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


# ------------------------------------------------------------------------------- search step
def pinned_arch(sn: Any, op: str, keys: int) -> dict[str, Any]:
    """``op`` at every point of supernet ``sn``, reading ``keys`` keys from every reference."""
    arch: dict[str, Any] = {}
    for p in sn.space:
        arch[p.op_label()] = op
        for r in p.refs:
            if p.key_label(r) in sn.choices:
                arch[p.key_label(r)] = keys
    return arch


def pinned_decisions(sn: Any, arch: dict[str, Any]) -> Callable[[], dict]:
    """A function returning the decisions of ``arch`` (:meth:`Supernet.decisions`) with
    straight-through gate weights ``p - p.detach() + 1`` (value 1) of the gates the point uses, so
    alpha gets a gradient through the network as in a search step."""
    from nas.engine.network import Decision

    fixed = sn.decisions(arch)
    idx = {label: sn.choices[label].values.index(v) for label, v in arch.items()}

    def decisions() -> dict:
        probs = sn.probs()
        out = {}
        for p in sn.space:
            d = fixed[p.name]
            labels = [p.op_label()]
            if d.active_keys is not None:
                labels += [p.key_label(r) for r in p.refs if p.key_label(r) in probs]
            weight = None
            for label in labels:
                q = probs[label][idx[label]]
                st = q - q.detach() + 1.0
                weight = st if weight is None else weight * st
            out[p.name] = Decision(d.op, d.active_keys, weight)
        return out

    return decisions


def search_step_rows(config_path: Path, device: torch.device, repeats: int, seed: int,
                     dev_name: str, samplers: Sequence[str] = ("auto",)) -> list[dict]:
    """Table 2: median time of one search step (weight step + alpha step) per pinned
    architecture: every point skip, and ACLA at every point with ``k`` keys per reference for
    each ``k > 0`` of the space, once per ACLA path in ``samplers``. See the module docstring."""
    from nas.config import load_config
    from nas.engine.supernet import Supernet
    from search_spaces.space import SKIP

    cfg = load_config(config_path)
    task = cfg.task
    torch.manual_seed(seed)
    sn = Supernet(cfg.space, task).to(device).train()
    with torch.no_grad():  # move the zero-initialised projections off zero: all branches live
        for name, prm in sn.net.named_parameters():
            if name.endswith("proj.weight"):
                prm.normal_(0.0, 0.02)
    bs, patch, scale = cfg.data.batch_size, cfg.data.patch_size, task.scale
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(bs, 3, patch // scale, patch // scale, generator=g).to(device),
                torch.rand(bs, 3, patch, patch, generator=g).to(device)) for _ in range(2)]
    base = float(sn.cost.fixed)
    lam = cfg.search.penalty.lam or 1e-3
    space_keys = sorted({k for p in sn.space for k in p.keys if k > 0})
    archs = [("skip", 0, "auto", pinned_arch(sn, SKIP, max(space_keys)))]
    archs += [("acla", k, smp, pinned_arch(sn, "acla", k)) for smp in samplers for k in space_keys]
    aclas = [m for m in sn.modules() if isinstance(m, ACLA)]

    def make_step(arch: dict[str, Any], sampler: str):
        decisions = pinned_decisions(sn, arch)
        path = ACLA.resolve_sampler(sampler, device)
        opt_w = torch.optim.Adam(sn.weight_parameters(), lr=cfg.search.lr)
        opt_a = torch.optim.Adam(sn.arch_parameters(), lr=cfg.search.alpha_lr)

        def clear() -> None:
            opt_w.zero_grad(set_to_none=True)
            opt_a.zero_grad(set_to_none=True)

        weights = sn.weight_parameters()

        def step() -> None:
            for m in aclas:
                m.sampler = path
            (lq, hr), (lq_v, hr_v) = batches
            sn.set_tau(1.0)
            sn.train()
            clear()  # weight step (supernet phase): train batch, L1, this path
            F.l1_loss(sn(lq, decisions()), hr).backward()
            opt_w.step()
            # alpha step (search phase): weights frozen, network in eval mode, another batch,
            # L1 + FLOPs penalty through the same path
            for w in weights:
                w.requires_grad_(False)
            sn.eval()
            clear()
            e_flops = sn.expected_flops()
            loss = F.l1_loss(sn(lq_v, decisions()), hr_v) + lam * (e_flops / base).float()
            loss.backward()
            opt_a.step()
            for w in weights:
                w.requires_grad_(True)

        return clear, step

    steps = [make_step(arch, smp) for _, _, smp, arch in archs]
    times: list[list[float]] = [[] for _ in archs]
    for r in range(repeats + 2):  # interleaved rounds, the first two untimed
        for i, (_, step) in enumerate(steps):
            t0 = time.perf_counter()
            step()
            sync(device)
            if r >= 2:
                times[i].append(time.perf_counter() - t0)
    rows = []
    t_skip = statistics.median(times[0])
    for (name, k, smp, arch), (clear, step), ts in zip(archs, steps, times):
        t = statistics.median(ts)
        label = "skip" if name == "skip" else f"acla_everywhere_k{k}"
        rows.append({"config": config_path.name,
                     "arch": label if smp == "auto" else f"{label}_{smp}",
                     "acla_sampler": "" if name == "skip" else ACLA.resolve_sampler(smp, device),
                     "keys_per_ref": k, "device": dev_name, "step_ms": round(1e3 * t, 2),
                     "ratio_vs_skip": round(t / t_skip, 4),
                     "peak_mem_mb": round(peak_memory_mb(step, clear, device), 2),
                     "gflops_720p": round(sn.cost.exact(arch) / 1e9, 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write the CSVs and the PNG, print the summary."""
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
    for size in args.sizes if args.operators else []:
        size_rows, built, exact = [], {}, {}
        for name in args.ops:
            op, num_refs, cfg, _ = op_config(name, args.keys)
            flops_cfg = {**cfg, "num_refs": num_refs} if num_refs else cfg
            gflops = exact[name] = OPERATORS.get(op).flops(args.channels, size, size,
                                                           flops_cfg) / 1e9
            row = {"op": name, "size": size, "hw": size * size, "device": dev_name,
                   "keys": args.keys if op == "acla" else "", "fwd_bwd_ms": "",
                   "peak_mem_mb": "", "analytic_gflops": round(gflops, 4), "gflops_per_s": "",
                   "gflops_per_s_rule": GFLOPS_RULE, "ratio_time_vs_nla": "",
                   "ratio_mem_vs_nla": "", "ratio_time_vs_rela": "", "note": ""}
            reason = nla_skip_reason(size, args.mem_cap_gib) if op == "nla" else None
            if reason:
                row["note"] = reason
            elif op == "acla":
                row["note"] = f"sampler {ACLA.resolve_sampler(OPS[name][3], device)}"
            if not reason:
                built[name] = build(name, args.channels, size, device, args.keys)
            size_rows.append(row)
        times = interleaved_ms({n: st for n, (_, st) in built.items()}, device, args.warmup,
                               args.repeats)
        for row in size_rows:
            name = row["op"]
            if name in built:
                clear, step = built[name]
                row["fwd_bwd_ms"] = round(times[name], 3)
                row["gflops_per_s"] = round(FWD_BWD_FACTOR * exact[name] / (times[name] / 1e3), 3)
                row["peak_mem_mb"] = round(peak_memory_mb(step, clear, device), 2)
            print(f"{name:16s} {size:4d}^2  time {row['fwd_bwd_ms']!s:>10} ms  "
                  f"mem {row['peak_mem_mb']!s:>9} MiB  {exact[name]:8.3f} GFLOPs  "
                  f"{row['gflops_per_s']!s:>8} GFLOP/s  {row['note']}", flush=True)
        rows += size_rows
        del built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        for ref_op, key in (("nla", "ratio_time_vs_nla"), ("rela", "ratio_time_vs_rela")):
            ref = next((r for r in rows if r["op"] == ref_op and r["size"] == row["size"]), None)
            if ref and ref["fwd_bwd_ms"] != "" and row["fwd_bwd_ms"] != "":
                row[key] = round(row["fwd_bwd_ms"] / ref["fwd_bwd_ms"], 4)
                if ref_op == "nla" and ref["peak_mem_mb"]:
                    row["ratio_mem_vs_nla"] = round(row["peak_mem_mb"] / ref["peak_mem_mb"], 4)
    if rows:
        csv_path = args.out / "attention_scaling.csv"
        write_csv(csv_path, COLUMNS, rows)
        png_path = args.out / "attention_scaling.png"
        plot(rows, png_path)
        print(f"\nwrote {csv_path} and {png_path} ({time.perf_counter() - t_start:.0f} s, {dev_name})")
        print("slope of log(time) vs log(H·W): all sizes / sizes >= 64x64")
        for name in args.ops:
            print(f"  {name:16s} {slope(rows, name):6.3f} / {slope(rows, name, 64 * 64):6.3f}")
        at128 = {r["op"]: r for r in rows if r["size"] == 128 and r["fwd_bwd_ms"] != ""}
        for name, r in at128.items():
            parts = [f"128x128 {name}: {r['fwd_bwd_ms']} ms, {r['peak_mem_mb']} MiB, "
                     f"{r['gflops_per_s']} GFLOP/s"]
            if r["ratio_time_vs_rela"] != "":
                parts.append(f"time/rela {r['ratio_time_vs_rela']:.3f}")
            if r["ratio_time_vs_nla"] != "":
                parts.append(f"nla/time {1 / r['ratio_time_vs_nla']:.1f}x")
            print(", ".join(parts))
        if "acla" in at128 and "acla_grid_sample" in at128:
            a, old = at128["acla"], at128["acla_grid_sample"]
            print(f"128x128 acla vs acla_grid_sample: time x{a['fwd_bwd_ms'] / old['fwd_bwd_ms']:.3f}, "
                  f"memory x{a['peak_mem_mb'] / old['peak_mem_mb']:.3f}")
    if args.search_step:
        t0 = time.perf_counter()
        step_rows = [r for c in args.search_config
                     for r in search_step_rows(c, device, args.step_repeats, args.seed, dev_name,
                                               args.step_samplers)]
        step_path = args.out / "search_step.csv"
        write_csv(step_path, STEP_COLUMNS, step_rows)
        print(f"\nwrote {step_path} ({time.perf_counter() - t0:.0f} s)")
        for r in step_rows:
            print(f"  {r['config']:18s} {r['arch']:22s} {r['step_ms']:9.1f} ms  x{r['ratio_vs_skip']:.3f}  "
                  f"{r['peak_mem_mb']:8.1f} MiB  {r['gflops_720p']:.3f} GFLOPs at 720p")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
