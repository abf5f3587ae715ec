"""The Ray engine (`reprlearn.cluster`): embed, enrol and index files on a local Ray cluster equal to one process;
resume; refusals. The two-node cluster (`ray start` twice on this machine) is in tests/test_cluster_nodes.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprlearn.cli import main
from reprlearn.errors import ClusterError, ConfigError, RunFolderError
from tests.photo_folder import make_photo_folder

pytest.importorskip("ray")

UNDECODABLE = b"\xff\xd8\xff" + bytes(200) + b"\xff\xd9"   # passes the index's checks, fails to decode


def _photos(root: Path, classes: int = 4, per_class: int = 10, seed: int = 2) -> Path:
    make_photo_folder(root, classes=classes, per_class=per_class, seed=seed, sizes=(20, 40))
    (root / "class_01" / "undecodable.jpg").write_bytes(UNDECODABLE)
    return root


def _rows(path: Path) -> dict:
    """`{name: (label, class_name, embedding)}` of a Parquet file or folder of shards."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    return {name: (label, cls, np.asarray(vector, np.float32)) for name, label, cls, vector in
            zip(table["name"], table["label"], table["class_name"], table["embedding"])}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster in this process (two CPUs), shut down after the module."""
    from reprlearn.cluster.engine import connect

    ray = connect(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("cluster") / "photos")


def _load(run, photos):
    from reprlearn.data import load_spec

    return load_spec(f"folder:{photos}", decoding=run.decoding)


def test_ray_embedding_shards_equal_the_one_process_file_and_a_stopped_job_resumes(local_ray, digits_run, photos,
                                                                                  tmp_path):
    from reprlearn.cluster.embed import EMBED_MANIFEST, embed_files, shard_name
    from reprlearn.runs import load_run
    from reprlearn.runs.files import write_embeddings

    run = load_run(digits_run)
    data = _load(run, photos)
    dim, failed_here = write_embeddings(tmp_path / "one.parquet", data, run)
    progress = io.StringIO()
    summary = embed_files(digits_run, data, tmp_path / "shards", actors=1, batch=7, stream=progress)
    assert progress.getvalue().splitlines()[-1].startswith("embedding on Ray (1 actor): 41/41 files, ")
    assert summary["failed"] == failed_here == ["class_01/undecodable.jpg"]
    # shards of ceil(41 / (1 actor × 4)) = 11 files
    assert summary["items"] == 41 and summary["written"] == 40 and summary["shards"] == 4
    one, shards = _rows(tmp_path / "one.parquet"), _rows(tmp_path / "shards")
    assert sorted(one) == sorted(shards) and len(one) == 40
    for name, (label, cls, vector) in one.items():
        assert shards[name][:2] == (label, cls)
        np.testing.assert_allclose(shards[name][2], vector, atol=1e-6)
    manifest = json.loads((tmp_path / "shards" / EMBED_MANIFEST).read_text())
    assert manifest["complete"] and manifest["items"] == 41 and manifest["failed"] == ["class_01/undecodable.jpg"]

    # Stopped half-way: two shards missing, one half-written (a hidden temporary), the job not complete.
    kept = {k: (tmp_path / "shards" / shard_name(k)).stat().st_mtime_ns for k in (0, 2)}
    for k in (1, 3):
        (tmp_path / "shards" / shard_name(k)).rename(tmp_path / "shards" / f".{shard_name(k)}.999.tmp")
    (tmp_path / "shards" / EMBED_MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    again = embed_files(digits_run, data, tmp_path / "shards", actors=2)   # the job's shard size, not a new one
    assert again["resumed"] == 2 and again["shards"] == 4 and again["failed"] == ["class_01/undecodable.jpg"]
    assert {k: (tmp_path / "shards" / shard_name(k)).stat().st_mtime_ns for k in kept} == kept  # not redone
    assert not list((tmp_path / "shards").glob(".*.tmp"))
    assert sorted(_rows(tmp_path / "shards")) == sorted(one)
    assert json.loads((tmp_path / "shards" / EMBED_MANIFEST).read_text())["complete"]


def test_a_folder_of_another_job_is_refused_and_a_file_a_node_cannot_read_is_named(local_ray, digits_run, photos,
                                                                                   tmp_path):
    import shutil

    from reprlearn.cluster.embed import EMBED_MANIFEST, embed_files
    from reprlearn.runs import load_run

    run = load_run(digits_run)
    copy = shutil.copytree(photos, tmp_path / "photos")
    data = _load(run, copy)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / EMBED_MANIFEST).write_text(json.dumps({"model_fingerprint": "another"}))
    with pytest.raises(RunFolderError, match=r"holds embeddings of another job \(run, model_fingerprint, view, "
                                             r"items, data_fingerprint differ\)"):
        embed_files(digits_run, data, tmp_path / "out", actors=1)
    # The index was built; then the data went away under the workers (as on a node without the mount).
    gone = copy / data.names[-1]
    gone.unlink()
    with pytest.raises(ClusterError, match=rf"node \S+ cannot read {gone} \(the data must be at the same path"):
        embed_files(digits_run, data, tmp_path / "late", actors=1)
    assert not json.loads((tmp_path / "late" / EMBED_MANIFEST).read_text())["complete"]


def test_the_file_index_checked_by_ray_tasks_or_processes_equals_the_one_thread_index(local_ray, tmp_path):
    from reprlearn.cluster.files import ray_map
    from reprlearn.data.files import _local_processes, index_folder, parallel_files

    root = _photos(tmp_path / "p", classes=3, per_class=30)
    (root / "class_02" / "empty.png").write_bytes(b"")
    (root / "class_00" / "notes.txt").write_text("not an image")
    with parallel_files(None):
        one = index_folder(root)
    for mapper in (_local_processes, ray_map):
        with parallel_files(mapper):
            other = index_folder(root)
        for field in ("relative", "sizes", "mtimes"):
            np.testing.assert_array_equal(getattr(other.files, field), getattr(one.files, field))
        np.testing.assert_array_equal(other.labels, one.labels)
        assert other.problems == one.problems == [("class_02/empty.png", "zero bytes")]
        assert other.ignored == one.ignored == 1 and other.class_names == one.class_names


def test_a_large_folder_is_checked_by_a_process_per_core(tmp_path, monkeypatch):
    import reprlearn.data.files as files

    root = _photos(tmp_path / "p", classes=2, per_class=12)
    used = []
    monkeypatch.setattr(files, "PARALLEL_FILES", 10)
    monkeypatch.setattr(files, "_local_processes", lambda f, a: used.append(len(a)) or files._serial(f, a))
    monkeypatch.setattr(files, "CHECK_CHUNK", 5)
    index = files.index_folder(root)
    assert used == [5] and len(index) == 25   # 25 files in 5 chunks; the cores' pool when the machine has two
    monkeypatch.setattr(files, "PARALLEL_FILES", 26)
    files.index_folder(root)
    assert used == [5]


@pytest.mark.parametrize("args, message", [
    (["--engine", "ray", "--actors", "0"], "--actors must be a positive integer. Received: --actors=0"),
    (["--engine", "ray", "--batch", "0"], "--batch must be a positive integer. Received: --batch=0"),
    (["--actors", "2"], "--address, --actors and --batch are for --engine ray. Received: --engine local"),
])
def test_counts_and_engine_options_are_refused_in_one_line(digits_run, photos, tmp_path, capsys, args, message):
    code = main(["embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "e"), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_an_address_where_no_ray_cluster_answers_is_named_at_once(digits_run, digits_config, photos, tmp_path,
                                                                  capsys):
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]   # closed again: nothing listens there
    started = time.monotonic()
    for command in (["embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "e")],
                    ["train", str(digits_config), "--workers", "2"]):
        code = main([*command, "--engine", "ray", "--address", f"127.0.0.1:{port}"])
        err = capsys.readouterr().err
        assert code == 2 and f"no Ray cluster answers at 127.0.0.1:{port}" in err, err
    assert time.monotonic() - started < 15
    assert main(["embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "e"),
                 "--engine", "ray", "--address", "nowhere"]) == 2
    assert "--address must be host:port" in capsys.readouterr().err


def test_ray_needs_files_a_folder_out_and_a_milvus_server(digits_run, digits_config, photos, tmp_path, capsys):
    from reprlearn.cluster.embed import embed_files
    from reprlearn.data import load_spec

    with pytest.raises(ConfigError, match="--engine ray embeds image files"):
        embed_files(digits_run, load_spec("digits"), tmp_path / "e")
    code = main(["embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "e.parquet"),
                 "--engine", "ray"])
    assert code == 2 and "--engine ray writes a folder of Parquet shards" in capsys.readouterr().err
    for backend, message in (("exact", "--engine ray enrols into a Milvus server"),
                             ("milvus", "Milvus Lite serves a .db file to one")):
        code = main(["index", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "g"),
                     "--backend", backend, "--engine", "ray"])
        assert code == 2 and message in capsys.readouterr().err
    for args, message in (([], "--engine ray trains with --workers N (N >= 2) placed by Ray. Received: no --workers"),
                          (["--workers", "1"], "--workers must be >= 2 (one process trains without it). Received: "
                                               "--workers=1"),
                          (["--workers", "2", "--restarts", "-1"], "--restarts must be >= 0. Received: --restarts=-1")):
        code = main(["train", str(digits_config), "--engine", "ray", *args])
        assert code == 2 and message in capsys.readouterr().err
    code = main(["train", str(digits_config), "--restarts", "1"])
    assert code == 2 and "--address and --restarts are for --engine ray" in capsys.readouterr().err


def test_without_ray_the_engine_names_the_extra_and_reprlearn_never_imports_ray(tmp_path):
    script = ("import sys\nimport reprlearn, reprlearn.cli, reprlearn.cluster.embed, reprlearn.cluster.train\n"
              "assert 'ray' not in sys.modules, 'ray imported'\n"
              "sys.modules['ray'] = None\n"
              "from reprlearn.cluster.engine import connect\n"
              "try:\n    connect(None)\nexcept Exception as err:\n    print(type(err).__name__, err)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ("ClusterError --engine ray needs Ray: pip install 'reprlearn[ray]'. Received: ray "
                                   "is not installed")


def test_an_index_task_on_a_node_without_the_data_names_the_node_and_file(local_ray, tmp_path):
    from reprlearn.cluster.files import ray_map
    from reprlearn.data.files import _stat_and_check

    (tmp_path / "here.png").write_bytes(b"")
    with pytest.raises(ClusterError, match=rf"node \S+ cannot read {tmp_path / 'gone.jpg'} \(No such file"):
        ray_map(_stat_and_check, [(str(tmp_path), ["here.png"]), (str(tmp_path), ["gone.jpg"])])
    assert ray_map(_stat_and_check, [(str(tmp_path), ["here.png"])]) == [[(0, (tmp_path / "here.png").stat()
                                                                          .st_mtime_ns, "zero bytes")]]


def test_progress_is_one_line_a_minute_off_a_terminal_and_says_rate_and_eta(monkeypatch):
    import io

    import reprlearn.cluster.engine as engine

    clock = [100.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = engine.Progress(1000, "embedding", stream, done=100)
    clock[0] += 30
    progress.advance(300)
    assert stream.getvalue() == ""   # half a minute: nothing yet
    clock[0] += 30
    progress.advance(300)
    assert stream.getvalue() == "embedding: 700/1,000 files, 10 files/s, ETA 30 s\n"
    clock[0] += 30
    progress.advance(300)
    progress.finish()
    assert stream.getvalue().splitlines()[-1] == "embedding: 1,000/1,000 files, 10 files/s, ETA 0 s"


def test_one_process_leaves_out_and_names_a_file_that_does_not_decode(digits_run, photos, tmp_path, capsys):
    import pyarrow.parquet as pq

    from reprlearn.index import Gallery

    for out in ("e.npz", "e.parquet"):
        assert main(["embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / out)]) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("40 embeddings of dimension 16")
        assert "1 files did not decode and were left out: class_01/undecodable.jpg" in captured.err
    with np.load(tmp_path / "e.npz") as arrays:
        assert arrays["embeddings"].shape == (40, 16) and np.isfinite(arrays["embeddings"]).all()
        assert "class_01/undecodable.jpg" not in arrays["names"].tolist() and len(arrays["labels"]) == 40
        np.testing.assert_array_equal(arrays["names"], pq.read_table(tmp_path / "e.parquet")["name"].to_numpy())
    assert main(["index", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "g")]) == 0
    assert "left out: class_01/undecodable.jpg" in capsys.readouterr().err
    gallery = Gallery.load(tmp_path / "g")
    assert len(gallery) == 40 and "class_01/undecodable.jpg" not in gallery.ids.tolist()
