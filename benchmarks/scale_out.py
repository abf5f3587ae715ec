"""Scaling out: embedding throughput in one process vs a Ray actor pool, the driver's memory, the file index on a
process per core, and a projection to 10⁷ photos on K nodes.

Run: .venv/bin/python benchmarks/scale_out.py [--sizes 10000 100000] [--index-sizes 100000 1000000] [--repeats 3]

Writes (once) under runs/scale_out/: 2,000 generated photos (benchmarks/photos.py's kind, 40-160 px, JPEG / PNG /
GIF / BMP) and folders of 10⁴, 10⁵, ... files that hard-link them (each file its own name and directory entry, the
bytes shared: decoding costs the same, the disk does not fill), and one run trained briefly on them at 64 × 64 (a
conv tower; its accuracy is not the point). Then, each in a fresh process, alternating the rows `--repeats` times
(this machine's speed is bimodal; the table gives medians):

- `reprlearn embed` in one process (.parquet) against `--engine ray` with 1 and 2 actors on a local Ray cluster:
  files/s of the whole embed call (model loading and actor start included; the cluster's own start is timed apart),
  and the driver's peak RSS;
- the file index of 10⁵ and 10⁶ files with its checks in one thread and on a process per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "scale_out"
DISTINCT = 2_000
CLASSES = 20
CONFIG = """\
# .venv/bin/python benchmarks/scale_out.py (trains this once into runs/scale_out/run)
data: {{name: "folder:{folder}", image_size: [64, 64], channels: 3, resize: stretch}}
model: {{tower: conv, embedding_dim: 64}}
train: {{epochs: 1, steps_per_epoch: 20, classes_per_batch: 8, examples_per_class: 8}}
eval: {{verification_pairs: 200, projection: pca, projection_points: 100, projector_points: 50}}
"""

MEASURE_EMBED = """
import json, resource, sys, time
from pathlib import Path
engine, run_dir, folder, out, actors = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
from reprlearn.data import load_spec
from reprlearn.runs import load_run
cluster_start = 0.0
if engine == "ray":
    from reprlearn.cluster.engine import connect
    started = time.perf_counter()
    connect(None)
    cluster_start = time.perf_counter() - started
started = time.perf_counter()
run = load_run(run_dir)
data = load_spec("folder:" + folder, decoding=run.decoding)
indexed = time.perf_counter() - started
started = time.perf_counter()
if engine == "ray":
    from reprlearn.cluster.embed import embed_files
    written = embed_files(run_dir, data, out, actors=actors, stream=open("/dev/null", "w"))["written"]
else:
    from reprlearn.runs.files import write_embeddings
    written = len(data) - len(write_embeddings(out, data, run)[1])
seconds = time.perf_counter() - started
print(json.dumps({"files": written, "seconds": seconds, "cluster_start": cluster_start, "index": indexed,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MEASURE_INDEX = """
import json, sys, time
import reprlearn.data.files as files
mode, folder = sys.argv[1], sys.argv[2]
started = time.perf_counter()
with files.parallel_files(files._local_processes if mode == "cores" else None):
    index = files.index_folder(folder)
print(json.dumps({"files": len(index), "seconds": time.perf_counter() - started}))
"""


def _distinct() -> Path:
    folder = WORK / "distinct"
    if not (folder / ".done").is_file():
        sys.path.insert(0, str(ROOT))
        from tests.photo_folder import make_photo_folder

        make_photo_folder(folder, classes=CLASSES, per_class=DISTINCT // CLASSES, seed=11)
        (folder / ".done").write_text("")
    return folder


def _linked(size: int) -> Path:
    """A folder of `size` files: hard links to the distinct photos, spread over the same class folders."""
    folder = WORK / f"files-{size}"
    if (folder / ".done").is_file():
        return folder
    sources = sorted(p for p in _distinct().rglob("*") if p.is_file() and not p.name.startswith("."))
    for i in range(size):
        source = sources[i % len(sources)]
        target = folder / source.relative_to(WORK / "distinct").parent / f"{i:08d}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(source, target)
    (folder / ".done").write_text("")
    return folder


def _run() -> Path:
    run = WORK / "run"
    if not (run / "report.json").is_file():
        config = WORK / "scale_out.yaml"
        config.write_text(CONFIG.format(folder=_distinct()))
        subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", str(config), "--out", str(run), "--quiet"],
                       check=True)
    return run


def _fresh(script: str, *args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def embedding(sizes: list[int], repeats: int) -> dict:
    run = _run()
    rows = [("one process", "local", 1), ("Ray, 1 actor", "ray", 1), ("Ray, 2 actors", "ray", 2)]
    results = {}
    for size in sizes:
        folder = _linked(size)
        for repeat in range(repeats):
            for name, engine, actors in (rows if repeat % 2 == 0 else rows[::-1]):
                out = WORK / "out" / f"{engine}-{actors}-{size}"
                subprocess.run(["rm", "-rf", str(out), str(out) + ".parquet"], check=True)
                measured = _fresh(MEASURE_EMBED, engine, run, folder, str(out) + (".parquet" if engine == "local"
                                                                                  else ""), actors)
                results.setdefault((size, name), []).append(measured)
                print(f"  {size:>7} {name:<14} repeat {repeat + 1}: {measured['files'] / measured['seconds']:,.0f} "
                      f"files/s, driver {measured['rss_mb']:,.0f} MB", flush=True)
    print("\n| photos | path | files/s (median) | ratio to one process | embed call s | cluster start s | "
          "driver peak RSS MB |\n|---|---|---|---|---|---|---|")
    summary = {}
    for size in sizes:
        base = statistics.median(m["files"] / m["seconds"] for m in results[(size, "one process")])
        for name, _, _ in rows:
            got = results[(size, name)]
            rate = statistics.median(m["files"] / m["seconds"] for m in got)
            summary[(size, name)] = {"rate": rate, "rss": statistics.median(m["rss_mb"] for m in got),
                                     "start": statistics.median(m["cluster_start"] for m in got),
                                     "seconds": statistics.median(m["seconds"] for m in got)}
            print(f"| {size:,} | {name} | {rate:,.0f} | {rate / base:.2f}× | {summary[(size, name)]['seconds']:.1f} | "
                  f"{summary[(size, name)]['start']:.1f} | {summary[(size, name)]['rss']:,.0f} |")
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for name, _, _ in rows:
            growth = summary[(large, name)]["rss"] - summary[(small, name)]["rss"]
            print(f"driver RSS growth {small:,} → {large:,} photos, {name}: {growth:+,.0f} MB")
    return summary


def file_index(sizes: list[int], repeats: int) -> dict:
    results = {}
    for size in sizes:
        folder = _linked(size)
        for repeat in range(repeats):
            for mode in (("thread", "cores") if repeat % 2 == 0 else ("cores", "thread")):
                measured = _fresh(MEASURE_INDEX, mode, folder)
                results.setdefault((size, mode), []).append(measured["files"] / measured["seconds"])
                print(f"  index {size:>8} {mode:<6} repeat {repeat + 1}: {results[(size, mode)][-1]:,.0f} files/s",
                      flush=True)
    print(f"\n| files | one thread, files/s | a process per core ({os.cpu_count()}), files/s | ratio |\n"
          "|---|---|---|---|")
    summary = {}
    for size in sizes:
        one, many = (statistics.median(results[(size, mode)]) for mode in ("thread", "cores"))
        summary[size] = {"thread": one, "cores": many}
        print(f"| {size:,} | {one:,.0f} | {many:,.0f} | {many / one:.2f}× |")
    return summary


def projection(embed: dict, index: dict, sizes: list[int], index_sizes: list[int]) -> None:
    """10⁷ photos on K nodes of this machine's kind, one actor each: a projection from the rates measured above."""
    size = sizes[-1]
    per_actor = embed[(size, "Ray, 1 actor")]["rate"]
    overhead = embed[(size, "Ray, 1 actor")]["start"] + embed[(size, "Ray, 1 actor")]["seconds"] - size / per_actor
    largest = index_sizes[-1]
    index_rate = index[largest]["cores"]
    total = 10_000_000
    print(f"\nProjection (not measured): 10⁷ photos, one actor per node of this machine's kind ({per_actor:,.0f} "
          f"files/s per actor at {size:,} photos); the driver's file index on a process per core "
          f"({index_rate:,.0f} files/s at {largest:,} files): {total / index_rate / 60:,.1f} min")
    print("| nodes | embedding, hours | with the index and start-up, hours |\n|---|---|---|")
    for nodes in (1, 4, 16, 64):
        hours = total / (per_actor * nodes) / 3600
        print(f"| {nodes} | {hours:,.2f} | {hours + (total / index_rate + max(overhead, 0)) / 3600:,.2f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--index-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["embed", "index"])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    embed = embedding(args.sizes, args.repeats) if "embed" not in args.skip else {}
    index = file_index(args.index_sizes, args.repeats) if "index" not in args.skip else {}
    if embed and index:
        projection(embed, index, args.sizes, args.index_sizes)


if __name__ == "__main__":
    main()
