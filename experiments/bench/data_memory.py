"""Memory of the training data pipeline against the number of training images.

For the N largest images of a folder (default ``$ACLA_NAS_DATA/train/T91``, N = 9 and 91; the
largest image is in every subset, so the peak of preparing one image at a time is the same), each
in a fresh process: build the source and draw ``--steps`` batches from a :class:`PatchStream`.
Sources: ``subimages`` (the sub-image cache of :class:`nas.restoration.patches.SubImageSource`
with MATLAB-bicubic LR; phase ``prepare`` makes the cache in that process, phase ``train`` reads
an existing cache, one sub-image per patch) and ``memory`` (every decoded image and its degraded
input held in memory, the path of the built-in photos). Records the peak resident set size
(``ru_maxrss``, MiB) and the RSS growth over the process's start; the claim is that
``subimages`` stays flat in N while ``memory`` grows with the decoded pixels.
Output: ``results/bench/data_memory.csv``.

    python experiments/bench/data_memory.py [--folder DIR] [--counts 9 91] [--scale 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Current resident set size of this process (MiB, from ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(a: argparse.Namespace) -> None:
    """One measurement (runs in its own process)."""
    from PIL import Image

    from nas.restoration.data import make_pairs
    from nas.restoration.images import list_images, load_image
    from nas.restoration.patches import MemorySource, PatchStream, SubImageSource
    from nas.restoration.task import Task

    task = Task("sr", scale=a.scale)
    # the N largest images: the largest image (which sets the peak of preparing one image at
    # a time) is the same for every N, so what is left is the dependence on the count
    def pixels_of(f):
        w, h = Image.open(f).size
        return w * h

    files = sorted(list_images(a.folder), key=pixels_of, reverse=True)
    files = files[:a.n]
    base = rss_mib()
    if a.kind == "memory":
        src = MemorySource(make_pairs({f.stem: load_image(f) for f in files}, task))
        pixels = sum(p.hr.size for p in src.pairs)
    else:
        src = SubImageSource(files, task, Path(a.cache), crop=a.crop, step=a.crop // 2)
        pixels = 0  # one sub-image is decoded per patch
    stream = PatchStream(src, task, a.patch, a.batch, seed=0)
    for _ in range(a.steps):
        stream.next()
    print(json.dumps({"rss_after_mib": rss_mib(), "rss_before_mib": base,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "sources": len(src), "hr_pixels_in_memory": pixels}))


def main() -> int:
    data = Path(os.environ.get("ACLA_NAS_DATA", ROOT.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=data / "train" / "T91")
    p.add_argument("--counts", type=int, nargs="+", default=[9, 91])
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--crop", type=int, default=96, help="sub-image side (480 for DIV2K)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return 0
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for kind, phase in (("subimages", "prepare"), ("subimages", "train"), ("memory", "train")):
            for n in a.counts:
                cmd = [sys.executable, __file__, "--child", "--kind", kind, "--n", str(n),
                       "--cache", cache, "--folder", str(a.folder), "--scale", str(a.scale),
                       "--patch", str(a.patch), "--batch", str(a.batch), "--steps",
                       str(a.steps), "--crop", str(a.crop)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                              text=True).stdout.strip().splitlines()[-1])
                rows.append({"storage": kind, "phase": phase, "images": n,
                             "folder": a.folder.name, **r,
                             "rss_growth_mib": round(r["rss_after_mib"] - r["rss_before_mib"], 1)})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows).round(1)
    lo, hi = min(a.counts), max(a.counts)
    for (kind, phase), d in df.groupby(["storage", "phase"], sort=False):
        d = d.set_index("images")
        print(f"{kind} ({phase}): peak RSS {d.peak_rss_mib[lo]:.1f} MiB with {lo} images, "
              f"{d.peak_rss_mib[hi]:.1f} MiB with {hi} ({d.peak_rss_mib[hi] / d.peak_rss_mib[lo]:.3f}x); "
              f"growth {d.rss_growth_mib[lo]:.1f} vs {d.rss_growth_mib[hi]:.1f} MiB")
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "data_memory.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
