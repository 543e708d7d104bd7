"""Does ``torch.compile`` make ACLA faster? Eager against compiled, for both sampling paths, at
the size of a CPU search step (issue #12: "torch.compile where it measurably wins").

One ACLA module in training mode (adaptive mask sampled every step, 2 references x ``--keys``
keys, projection moved off zero), forward + backward of a fixed output gradient on a batch of
``--batch`` maps of ``--size`` x ``--size`` x ``--channels`` - by default the pre-0.2 search space's
step (edsr-small: batch 8, 24x24 LR patches, 32 channels, 9 keys), where ACLA costs about 3
residual blocks. Four variants, timed in interleaved rounds after the compile (whose wall time is
reported separately): ``sparse`` / ``grid_sample`` sampler, ``eager`` / ``compiled``
(``torch.compile(module)``, inductor, default mode; on CPU the sparse path's ``nonzero`` is a
graph break). Output ``results/bench/acla_compile.csv``: ``sampler, variant, device, fwd_bwd_ms,
compile_s, time_ratio`` (ratio to the eager sparse path, the default).

Usage::

    python experiments/bench/acla_compile.py [--batch 8] [--size 24] [--channels 32] [--keys 9]
        [--repeats 15] [--threads 1] [--out results/bench]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.timing import interleaved_ms, write_csv  # noqa: E402
from search_spaces.operators import OPERATORS  # noqa: E402

COLUMNS = ["sampler", "variant", "device", "fwd_bwd_ms", "compile_s", "time_ratio"]
NUM_REFS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--keys", type=int, default=9)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: default)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    return p.parse_args(argv)


def build(args, sampler: str, compiled: bool):
    """``(step, compile_seconds)``: one training-mode forward + backward of the variant."""
    torch.manual_seed(0)
    module = OPERATORS.get("acla")(args.channels, NUM_REFS, keys=[args.keys] * NUM_REFS)
    module.sampler = sampler
    module.train()
    with torch.no_grad():
        module.proj.weight.normal_(0.0, 0.02)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape, requires_grad=True)
    refs = [torch.randn(shape, requires_grad=True) for _ in range(NUM_REFS)]
    grad = torch.randn(shape)
    fn = torch.compile(module) if compiled else module

    def step() -> None:
        for t in [x, *refs, *module.parameters()]:
            t.grad = None
        fn(x, refs).backward(grad)

    t0 = time.perf_counter()
    if compiled:  # the compile happens in the first calls (forward and backward graphs)
        step()
        step()
    return step, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # the sparse path's graph break is expected (see the docstring): keep its report short
    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore", message="Error detected in")
    dev = f"cpu {torch.get_num_threads()} thread(s)"
    steps, rows = {}, []
    for sampler in ("sparse", "grid_sample"):
        for variant in ("eager", "compiled"):
            step, compile_s = build(args, sampler, variant == "compiled")
            steps[f"{sampler}/{variant}"] = step
            rows.append({"sampler": sampler, "variant": variant, "device": dev,
                         "compile_s": round(compile_s, 2) if variant == "compiled" else 0.0})
    times = interleaved_ms(steps, torch.device("cpu"), args.warmup, args.repeats)
    base = times["sparse/eager"]
    for r in rows:
        ms = times[f"{r['sampler']}/{r['variant']}"]
        r["fwd_bwd_ms"] = round(ms, 3)
        r["time_ratio"] = round(ms / base, 4)
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_csv(args.out / "acla_compile.csv", COLUMNS, rows)
    print(f"wrote {path} ({dev}; batch {args.batch}, {args.size}x{args.size}, {args.channels} "
          f"channels, {NUM_REFS} x {args.keys} keys)")
    for r in rows:
        print(f"  {r['sampler']:11s} {r['variant']:8s} {r['fwd_bwd_ms']:9.2f} ms  "
              f"x{r['time_ratio']:.3f}  compile {r['compile_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
