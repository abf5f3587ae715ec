"""The photo input pipeline of this checkout against another revision's, on the same folder: is it as fast as before?

Run: .venv/bin/python benchmarks/pipeline_ab.py --base 271258e [--folder /tmp/reprlearn-photos/photos-10000]

Checks out `--base` in a temporary git worktree, then measures images/s of the P×K pipeline (decode + resize to
96 × 96, 8 × 16 batches) in a fresh process per measurement, alternating base and this checkout `--repeats` times
(this machine's speed is bimodal), and prints each pair and the median ratio. The folder is benchmarks/photos.py's
(it writes it: `.venv/bin/python benchmarks/photos.py --sizes 10000 --skip index pipeline training memory formats`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURE = """
import sys, time
from reprlearn.data.loaders import Decoding, load_dataset
from reprlearn.data.pipelines import pk_batches
imageset = load_dataset("folder:" + sys.argv[1], decoding=Decoding((96, 96), 3, "stretch"))["all"]
batches = iter(pk_batches(imageset, imageset.labels, 8, 16, seed=0))
next(batches)
started, seen = time.perf_counter(), 0
while seen < int(sys.argv[2]):
    seen += int(next(batches)[0].shape[0])
print(seen / (time.perf_counter() - started))
"""


def rate(tree: Path, folder: str, images: int) -> float:
    environment = {"PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", MEASURE, folder, str(images)], cwd=tree, capture_output=True,
                          text=True, env=environment)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "reprlearn-photos" / "photos-10000"))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            print(f"| repeat | {args.base} images/s | this checkout images/s | ratio |\n|---|---|---|---|")
            ratios = []
            for repeat in range(args.repeats):
                old, new = rate(base, args.folder, args.images), rate(ROOT, args.folder, args.images)
                ratios.append(new / old)
                print(f"| {repeat + 1} | {old:,.0f} | {new:,.0f} | {new / old:.2f}× |", flush=True)
            print(f"\nmedian ratio: {statistics.median(ratios):.2f}×")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
