"""Gallery search: reprlearn's exact kernel against faiss, in one process, over sizes.

Run: .venv/bin/python benchmarks/search.py [--repeats 3] [--quick]

1. Exact search, a sweep of (gallery items, dim, k): `Gallery(backend="exact")` (the kernel retrieval
   metrics and SavedModels use) against `Gallery(backend="faiss-flat")` (faiss `IndexFlatL2`) on the
   same float32 Gaussian clusters, 10,000 queries (1,000 at 10^6 items), each timed after a warm-up;
   the two alternate for `repeats` rounds and the table prints medians and their ratio (this machine's
   speed is bimodal). Every row checks that both return the same neighbours.
   Target (issue 26): ≤ 1.0× faiss flat at 10^4 queries × 10^5 items × 128, top-10.
2. faiss HNSW (M = 32) at 10^5 × 128, top-10: build and search time, recall@10 against exact.
3. A 1,000,000 × 128 exact gallery answering 1,000 queries, with the process's peak resident
   memory (the gallery is 0.5 GB of float32; the kernel holds one chunk of scores at a time).

With `--milvus [--milvus-items 1000000]` it measures `Gallery(backend="milvus")` instead (issue 27), each
step in a fresh process: the exact kernel and faiss flat on the same items (the reference neighbours);
enrolment into Milvus Lite in chunks of 10^5 (insert rate, index build time, disk size) for a FLAT and an
HNSW collection; then 16 and 1,000 queries, top-10, with the Lite file opened in the querying process
("embedded") and served by `milvus-lite server` to a client process ("server"), recall@10 against exact,
and the peak resident memory of the querying process (and of the server).
Retrieval metrics (P@1, MAP@R, NMI) against pytorch-metric-learning: benchmarks/retrieval_metrics.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import reprlearn  # noqa: E402, F401  (quiet TensorFlow start)
from reprlearn.index import Gallery  # noqa: E402


def clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around `classes` centres (the same centres for every seed), `seed` drawing the points."""
    centres = np.random.default_rng(0).normal(size=(classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32), labels


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


# (gallery items, dim, k, queries)
SWEEP = [(10_000, 128, 10, 10_000), (100_000, 64, 10, 10_000), (100_000, 128, 1, 10_000),
         (100_000, 128, 10, 10_000), (100_000, 128, 100, 10_000), (100_000, 512, 10, 10_000),
         (1_000_000, 128, 10, 1_000)]
QUICK = [(100_000, 128, 10, 10_000)]


def sweep_row(items_n: int, dim: int, k: int, queries_n: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of the exact kernel and of faiss flat, alternating, and the share of equal neighbours."""
    items, labels = clustered(items_n, dim, 1000, 0)
    queries, _ = clustered(queries_n, dim, 1000, 1)
    galleries = {}
    for backend in ("exact", "faiss-flat"):
        galleries[backend] = Gallery("L2", backend)
        galleries[backend].add(items, labels)
        galleries[backend].search(queries[:100], k)   # warm-up (graph tracing, faiss threads)
    times, found = {"exact": [], "faiss-flat": []}, {}
    for _ in range(repeats):
        for backend, gallery in galleries.items():
            (_, found[backend]), seconds = timed(lambda: gallery.search(queries, k))
            times[backend].append(seconds)
    same = float(np.mean(found["exact"] == found["faiss-flat"]))
    return float(np.median(times["exact"])), float(np.median(times["faiss-flat"])), same


def hnsw_row(k: int) -> tuple[float, float, float]:
    items, labels = clustered(100_000, 128, 1000, 0)
    queries, _ = clustered(10_000, 128, 1000, 1)
    exact = Gallery("L2")
    exact.add(items, labels)
    _, want = exact.search(queries, k)
    gallery = Gallery("L2", "faiss-hnsw")
    gallery.add(items, labels)
    _, build = timed(lambda: gallery.search(queries[:100], k))
    (_, got), seconds = timed(lambda: gallery.search(queries, k))
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))
    return build, seconds, recall


# ---- Milvus: each step a fresh process (`--milvus-child ROLE`) printing one JSON line ----

MILVUS_CHUNK, MILVUS_QUERIES, MILVUS_K = 100_000, 1_000, 10


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gallery_chunks(n: int):
    """The benchmark gallery, generated in chunks of 10^5 so that no process but the reference holds all of it."""
    for number, start in enumerate(range(0, n, MILVUS_CHUNK)):
        items, labels = clustered(min(MILVUS_CHUNK, n - start), 128, 1000, 10 + number)
        yield start, items, labels


def milvus_queries() -> np.ndarray:
    return clustered(MILVUS_QUERIES, 128, 1000, 4)[0]


def reference_child(folder: Path, n: int, repeats: int) -> dict:
    """The exact kernel and faiss flat over the whole gallery: seconds for 16 and 1,000 queries, and the
    reference neighbours (saved for the recall of the others)."""
    items = np.concatenate([chunk for _, chunk, _ in gallery_chunks(n)])
    labels = np.zeros(len(items), np.int64)
    queries, row = milvus_queries(), {}
    galleries = {backend: Gallery("L2", backend) for backend in ("exact", "faiss-flat")}
    for gallery in galleries.values():
        gallery.add(items, labels)
        gallery.search(queries[:16], MILVUS_K)  # warm-up
    times = {(backend, q): [] for backend in galleries for q in (16, MILVUS_QUERIES)}
    for _ in range(repeats):
        for backend, gallery in galleries.items():
            for q in (16, MILVUS_QUERIES):
                (_, found), seconds = timed(lambda: gallery.search(queries[:q], MILVUS_K))
                times[backend, q].append(seconds)
                if backend == "exact" and q == MILVUS_QUERIES:
                    np.save(folder / "reference.npy", found)
    for (backend, q), values in times.items():
        row[f"{backend} {q}"] = float(np.median(values))
    row["peak MiB"] = peak_mib()
    return row


def enrol_child(folder: Path, n: int, index: str) -> dict:
    """Enrols the gallery into a Milvus Lite file chunk by chunk; times inserting and indexing apart."""
    from reprlearn.index.milvus import MilvusCollection

    indexing = []
    build = MilvusCollection._index_lite_segments

    def timed_build(self):
        started = time.perf_counter()
        build(self)
        indexing.append(time.perf_counter() - started)

    MilvusCollection._index_lite_segments = timed_build
    gallery = Gallery("L2", "milvus", uri=str(folder / index / "gallery.db"), index=index)
    started = time.perf_counter()
    for start, items, labels in gallery_chunks(n):
        gallery.add(items, labels, [str(i) for i in range(start, start + len(items))])
    total = time.perf_counter() - started
    gallery.save(folder / index)
    gallery.close()
    disk = sum(f.stat().st_size for f in (folder / index / "gallery.db").rglob("*") if f.is_file())
    return {"insert s": total - sum(indexing), "index s": sum(indexing), "disk MiB": disk / 2**20,
            "peak MiB": peak_mib()}


def query_child(folder: Path, index: str, uri: str | None, repeats: int) -> dict:
    """Opens the gallery (the Lite file here, or a server at `uri`) and times 16 and 1,000 queries."""
    if uri is None:
        gallery, row = Gallery.load(folder / index), {}
    else:
        gallery, row = Gallery("L2", "milvus", uri=uri, index=index), {}
    queries = milvus_queries()
    reference = np.load(folder / "reference.npy").astype(str)
    gallery.neighbours(queries[:1], MILVUS_K)  # warm-up
    # Milvus Lite's FLAT scans one query at a time by broadcasting ([1, N, d] in memory): 16 queries only
    counts = (16,) if index == "FLAT" else (16, MILVUS_QUERIES)
    for q in counts:
        seconds = []
        for _ in range(repeats):
            (_, _, ids), took = timed(lambda: gallery.neighbours(queries[:q], MILVUS_K))
            seconds.append(took)
        row[f"{q} s"] = float(np.median(seconds))
        row["recall@10"] = float(np.mean([len(set(a) & set(b)) / MILVUS_K for a, b in zip(ids, reference)]))
    row["peak MiB"] = peak_mib()
    return row


def run_child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--milvus-child", *map(str, args)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve(data_dir: Path):
    """`milvus-lite server` on a free port over a Lite file; returns the process and its address once it answers."""
    from pymilvus import MilvusClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                               str(data_dir), "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            MilvusClient(uri=uri, timeout=2).close()
            return server, uri
        except Exception:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"milvus-lite server on {data_dir} did not answer at {uri}")


def server_peak_mib(server) -> float:
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def milvus_benchmark(n: int, repeats: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="reprlearn-milvus-"))
    try:
        print(f"Milvus Lite galleries, {n:,} × 128 float32, top-{MILVUS_K}, {os.cpu_count()} CPU cores; "
              f"latencies are medians of {repeats}; each step a fresh process\n", flush=True)
        reference = run_child("reference", folder, n, repeats)
        print(f"{'backend':<34}{'16 q s':>8}{'1,000 q s':>11}{'recall@10':>11}{'peak MiB':>10}")
        for backend in ("exact", "faiss-flat"):
            print(f"{'reprlearn ' + backend + ' (in process)':<34}{reference[f'{backend} 16']:>8.3f}"
                  f"{reference[f'{backend} {MILVUS_QUERIES}']:>11.2f}{1.0:>11.3f}{reference['peak MiB']:>10,.0f}",
                  flush=True)
        enrolled = {}
        for index in ("FLAT", "HNSW"):
            enrolled[index] = run_child("enrol", folder, n, index)
            for mode in ("embedded", "server"):
                server, uri = serve(folder / index / "gallery.db") if mode == "server" else (None, None)
                try:
                    row = run_child("query", folder, index, uri or "-", repeats)
                finally:
                    if server is not None:
                        server_mib = server_peak_mib(server)
                        server.terminate()
                        server.wait()
                thousand = f"{row[f'{MILVUS_QUERIES} s']:>11.2f}" if f"{MILVUS_QUERIES} s" in row else \
                    f"{'not run':>11}"
                memory = f"{row['peak MiB']:>10,.0f}" + (f" (server {server_mib:,.0f})" if server else "")
                print(f"{'Milvus Lite ' + index + ', ' + mode:<34}{row['16 s']:>8.3f}{thousand}"
                      f"{row['recall@10']:>11.3f}{memory}", flush=True)
        print(f"\n{'enrolment':<10}{'insert s':>10}{'items/s':>10}{'index s':>9}{'disk MiB':>10}{'peak MiB':>10}")
        for index, row in enrolled.items():
            print(f"{index:<10}{row['insert s']:>10.1f}{n / row['insert s']:>10,.0f}{row['index s']:>9.1f}"
                  f"{row['disk MiB']:>10,.0f}{row['peak MiB']:>10,.0f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the target row (10^5 × 128, top-10)")
    parser.add_argument("--milvus", action="store_true", help="Milvus Lite galleries instead of the kernel sweep")
    parser.add_argument("--milvus-items", type=int, default=1_000_000)
    parser.add_argument("--milvus-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.milvus_child:
        role, folder, *rest = args.milvus_child
        folder = Path(folder)
        if role == "reference":
            row = reference_child(folder, int(rest[0]), int(rest[1]))
        elif role == "enrol":
            row = enrol_child(folder, int(rest[0]), rest[1])
        else:
            row = query_child(folder, rest[0], None if rest[1] == "-" else rest[1], int(rest[2]))
        print(json.dumps(row))
        return
    if args.milvus:
        milvus_benchmark(args.milvus_items, args.repeats)
        return

    print(f"Exact search, L2, float32: medians of {args.repeats} alternating repeats, {os.cpu_count()} CPU cores\n")
    print(f"{'items':>10}{'dim':>5}{'k':>5}{'queries':>9}{'reprlearn s':>13}{'faiss flat s':>14}{'ratio':>8}"
          f"{'same ids':>10}")
    for items_n, dim, k, queries_n in QUICK if args.quick else SWEEP:
        ours, faiss_flat, same = sweep_row(items_n, dim, k, queries_n, args.repeats)
        print(f"{items_n:>10,}{dim:>5}{k:>5}{queries_n:>9,}{ours:>13.2f}{faiss_flat:>14.2f}{ours / faiss_flat:>7.2f}×"
              f"{same:>10.4f}", flush=True)

    build, seconds, recall = hnsw_row(10)
    print(f"\nfaiss HNSW (M = 32), 10^5 × 128, 10,000 queries, top-10: build + warm-up {build:.1f} s, "
          f"search {seconds:.2f} s, recall@10 vs exact {recall:.3f}")

    items, labels = clustered(1_000_000, 128, 1000, 3)
    gallery = Gallery("L2")
    gallery.add(items, labels)
    del items
    (_, _), seconds = timed(lambda: gallery.search(clustered(1000, 128, 1000, 4)[0], 10))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n1,000,000 × 128 exact gallery, 1,000 queries, top-10: {seconds:.1f} s; "
          f"peak resident memory of the whole run {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
