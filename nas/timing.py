"""Measurement helpers shared by the benchmark scripts in ``experiments/bench/``.

* :func:`interleaved_ms`: median wall times of callables timed in interleaved rounds (warm-up
  rounds first, CUDA synchronised).
* :func:`write_csv`: a benchmark table, written atomically (a killed run leaves the old one).
* :func:`peak_memory_mb`: peak *extra* tensor memory of one call. On CUDA
  ``max_memory_allocated - memory_allocated`` after ``reset_peak_memory_stats``; on the CPU the
  running sum of the allocator's ``[memory]`` events recorded by
  ``torch.profiler.profile(profile_memory=True)`` (tracemalloc does not see tensor storage).

Benchmarks report ratios measured in one run, never absolute targets in unit tests.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(step: Callable[[], None], clear: Callable[[], None],
                   device: torch.device) -> float:
    """Peak extra tensor memory (MiB) of one ``step()``; ``clear()`` first drops gradients."""
    clear()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def interleaved_ms(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                   repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each step, timed in interleaved rounds (one step of every entry
    per round, after ``warmup`` untimed rounds) so that slow phases of a shared machine hit all
    entries alike; an entry whose warm-up step takes more than 5 s gets 3 timed steps only."""
    slow = set()
    for _ in range(max(warmup, 1)):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync(device)
            if time.perf_counter() - t0 > 5.0:
                slow.add(name)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name, step in steps.items():
            if name in slow and r >= 3:
                continue
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``) as a CSV table with a header, atomically.

    Raises:
        ValueError: a row has a key that is not in ``columns``.
    """
    from nas.io import atomic_write_text

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
