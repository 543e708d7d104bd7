"""The README's main job, timed: ``acla-nas search -c experiments/quickstart.yaml`` from scratch.

Runs the study into ``--out`` (default ``results/quickstart``, emptied first; ``*.pt`` checkpoints
are git-ignored), measures its wall time, and summarises what a user gets: searched trials,
distinct architectures, front points, the share of the space's FLOPs range the front spans,
whether the front is within noise, and the fANOVA parameter importances of the outer
hyperparameters for each objective. Output: ``results/bench/quickstart_time.csv`` (one row per
run, appended, with the machine named) and the study's own ``pareto.*``/``trials.csv``.

    python experiments/bench/quickstart_time.py [--threads N] [--out results/quickstart]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "experiments" / "quickstart.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "quickstart")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads (the README's command uses all cores)")
    p.add_argument("--table", type=Path, default=ROOT / "results" / "bench" / "quickstart_time.csv")
    a = p.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas", "search", "-c", str(a.config), "--out",
                    str(a.out)], check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    summary = json.loads((a.out / "pareto.json").read_text())  # written by the study

    from nas.config import load_config
    from nas.study.run import prepare_study

    setup = prepare_study(load_config(a.config), str(a.config))
    rng = setup.specs["search.penalty.target_gflops"]
    lo, hi = rng.low, rng.high
    front = summary["front"]
    gf = [r["gflops"] for r in front]
    searched = [t for t in summary["trials"] if t["state"] == "COMPLETE" and not t["reference"]]
    imp = summary.get("parameter_importances") or {}

    cpu = "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": f"{cpu}, {a.threads} thread(s)",
           "cores": os.cpu_count(), "wall_s": round(wall, 1),
           "searched_trials": len(searched), "distinct_archs": len(summary["architectures"]),
           "front_points": len(front),
           "front_span_share": round((max(gf) - min(gf)) / (hi - lo), 3) if gf else 0.0,
           "space_gflops": f"{lo:.4f}-{hi:.4f}",
           "front_within_noise": summary["front_within_noise"],
           "noise_sd_db": summary["noise_sd_db"],
           "importance_psnr": json.dumps(imp.get("psnr_db", {})),
           "importance_gflops": json.dumps(imp.get("gflops", {}))}
    print(json.dumps(row, indent=1))
    new = not a.table.exists()
    a.table.parent.mkdir(parents=True, exist_ok=True)
    with a.table.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
