"""The demo's promise, measured: ``segdet demo`` at its defaults finishes in <= 3 minutes on 2 CPU cores
with a U-Net at mIoU >= 0.8 and a detector at box AP50 >= 0.7 on held-out synthetic images.

Runs the console command exactly as a user would (a fresh process, the default thread count, the
default settings) into a temporary folder, and prints its wall time (process start to exit, imports
included), the CPU time of the process, the load average before and after (other processes on a shared
machine slow it: say so when reporting), and each metric against its target. Exit status 1 when a
target is missed. Extra arguments go to ``segdet demo`` (e.g. ``--seed 1``).

Run: ``python benchmarks/demo.py`` (``--threads 2`` sets OMP_NUM_THREADS for the run; default: unset,
torch then uses one thread per core).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_LIMIT_S = 180.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (unset)")
    parser.add_argument("--keep", type=Path, default=None, help="write the demo here instead of a temp dir")
    args, extra = parser.parse_known_args()
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="segdet-demo-") as scratch:
        out = args.keep or Path(scratch) / "demo"
        command = [sys.executable, "-m", "segdet", "demo", "--out", str(out), "--overwrite", *extra]
        load_before = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            print(f"segdet demo failed with exit status {done.returncode}")
            return 1
        metrics = json.loads((out / "metrics.json").read_text())
    from segdet.cli.demo import TARGETS

    miou, ap50 = metrics["segmentation"]["mIoU"], metrics["detection"]["AP50"]
    rows = [
        ("wall time (s)", wall, f"<= {TIME_LIMIT_S:g}", wall <= TIME_LIMIT_S),
        ("mIoU (held-out)", miou, f">= {TARGETS['mIoU']}", miou >= TARGETS["mIoU"]),
        ("box AP50 (held-out)", ap50, f">= {TARGETS['AP50']}", ap50 >= TARGETS["AP50"]),
    ]
    print(f"segdet demo {' '.join(extra)} (OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')})")
    for name, value, target, ok in rows:
        print(f"  {name:20s} {value:8.3f}  target {target:8s}  {'ok' if ok else 'MISSED'}")
    print(f"  box AP {metrics['detection']['AP']:.3f}, mean Dice {metrics['segmentation']['mDice']:.3f}")
    print(f"  CPU time {usage.ru_utime + usage.ru_stime:.1f} s (user + system)")
    print(
        f"  load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
