"""A real two-node Ray cluster on this machine (`ray start --head` and a second `ray start --address`, one CPU each,
token authentication on, torn down after): embed, index into a Milvus Lite server and train two workers by address;
a fresh local cluster without one; Ctrl-C and a lost worker. Nothing leaves this machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from tests.test_cluster import _photos, _rows  # noqa: E402
from tests.test_distributed import _config, _epochs_done, _train, _weights, one_process_runs  # noqa: E402,F401

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPRLEARN = [sys.executable, "-m", "reprlearn.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """`(address, environment)` of a two-node cluster; every Ray process of it stops after the module."""
    folder = Path(tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ADDRESS": ""}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    nodes = [subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard=false",
                               "--temp-dir", str(folder / "ray"), *common], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        _wait_for_nodes(address, env, 1)
        nodes.append(subprocess.Popen([str(BIN / "ray"), "start", "--address", address, *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        for node in reversed(nodes):  # --block: stopping the command stops that node's processes
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_nodes(address: str, env: dict, count: int) -> None:
    script = (f"import ray\nray.init(address={address!r}, logging_level='ERROR')\n"
              "print(sum(1 for n in ray.nodes() if n['Alive']))")
    for _ in range(60):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes: {done.stderr[-2000:]}")


def _cli(*args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*REPRLEARN, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("nodes") / "photos", classes=5, per_class=12)


def test_embedding_by_address_and_on_a_fresh_local_cluster_equals_one_process(cluster, digits_run, photos, tmp_path):
    address, env = cluster
    one = _cli("embed", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "one.parquet", env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    on_nodes = _cli("embed", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "nodes", "--engine", "ray",
                    "--address", address, "--actors", "2", env=env)
    assert on_nodes.returncode == 0, on_nodes.stderr[-3000:]
    assert "60 embeddings of dimension 16" in on_nodes.stdout and "(8 Parquet shards)" in on_nodes.stdout
    assert "1 files did not decode and were left out: class_01/undecodable.jpg" in on_nodes.stderr
    assert "embedding on Ray (2 actors): 61/61 files" in on_nodes.stderr   # off a terminal: the last line
    local = _cli("embed", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "local", "--engine", "ray",
                 env={**env, "RAY_AUTH_MODE": "disabled"})  # no address: a new cluster, not the nodes above
    assert local.returncode == 0, local.stderr[-3000:]
    want = _rows(tmp_path / "one.parquet")
    for folder in ("nodes", "local"):
        got = _rows(tmp_path / folder)
        assert sorted(got) == sorted(want) and len(got) == 60
        for name, (label, cls, vector) in want.items():
            assert got[name][:2] == (label, cls)
            np.testing.assert_allclose(got[name][2], vector, atol=1e-6)


def test_enrolling_by_address_into_a_milvus_server_equals_the_one_process_gallery(cluster, digits_run, photos,
                                                                                  tmp_path):
    from reprlearn.index import Gallery

    address, env = cluster
    port = _free_port()
    server = subprocess.Popen([str(BIN / "milvus-lite"), "server", "--data-dir", str(tmp_path / "served.db"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        time.sleep(3)
        one = _cli("index", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "one", env=env)
        assert one.returncode == 0, one.stderr[-3000:]
        ray = _cli("index", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "ray", "--backend", "milvus",
                   "--uri", uri, "--collection", "on_ray", "--engine", "ray", "--address", address, "--actors", "2",
                   env=env)
        assert ray.returncode == 0, ray.stderr[-3000:]
        assert "Enrolled 60 items of 5 classes on Ray" in ray.stdout
        assert not (tmp_path / "ray" / "_reprlearn_index.json").exists()
        again = _cli("index", digits_run, "--data", f"folder:{photos}", "--out", tmp_path / "again", "--backend",
                     "milvus", "--uri", uri, "--collection", "on_ray", "--engine", "ray", "--address", address, env=env)
        assert again.returncode == 2 and "already holds 60 items" in again.stderr
        served, exact = Gallery.load(tmp_path / "ray"), Gallery.load(tmp_path / "one")
        assert len(served) == len(exact) == 60 and served.class_names == exact.class_names
        assert served.threshold == pytest.approx(exact.threshold, abs=1e-6)
        queries = np.random.default_rng(1).normal(size=(25, 16)).astype(np.float32)
        got, want = served.search(queries, 6), exact.search(queries, 6)
        np.testing.assert_array_equal(got[1], want[1])   # positions in enrolment order, as every backend numbers them
        np.testing.assert_allclose(got[0] ** 2, want[0] ** 2, atol=1e-5)
        np.testing.assert_array_equal(served.neighbours(queries, 6)[2], exact.neighbours(queries, 6)[2])
        served.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_two_workers_placed_by_ray_train_like_two_local_workers(cluster, tmp_path):
    address, env = cluster
    config = _config(tmp_path, 5)
    local = _train(config, "--out", tmp_path / "local", "--workers", 2, "--quiet", timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    placed = _cli("train", config, "--out", tmp_path / "ray", "--engine", "ray", "--workers", 2, "--address", address,
                  env=env)
    assert placed.returncode == 0, placed.stderr[-3000:]
    assert placed.stdout.count("epoch 1/3") == 1 and "Test MAP@R" in placed.stdout   # the chief's lines, once
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["config"]["train"]["strategy"] == "multi_worker"
    for got, want in zip(_weights(tmp_path / "ray"), _weights(tmp_path / "local")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_lost_worker_restarts_the_job_from_its_checkpoint(cluster, tmp_path, one_process_runs):  # noqa: F811
    import psutil

    address, env = cluster
    run, config = tmp_path / "mw", _config(tmp_path, 60)
    job = subprocess.Popen([*REPRLEARN, "train", str(config), "--out", str(run), "--engine", "ray", "--workers", "2",
                            "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _epochs_done(run) < 1 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if str(run) in " ".join(p.info["cmdline"] or []) and "--quiet" in (p.info["cmdline"] or [])
                   and "reprlearn.cli" in " ".join(p.info["cmdline"] or [])]
        assert len(workers) == 1 and _epochs_done(run) == 1, (workers, _epochs_done(run))
        workers[0].kill()   # worker 1's training process, on whichever node Ray placed it
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-3000:]
    assert "worker 1 exited with code -9" in stderr and "Starting again from the last checkpoint" in stderr
    assert "Resuming from" in stdout
    for got, want in zip(_weights(run), _weights(one_process_runs / "steps60")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_ctrl_c_keeps_the_finished_shards_and_the_same_command_finishes_the_job(cluster, digits_run, tmp_path):
    from reprlearn.cluster.embed import EMBED_MANIFEST

    address, env = cluster
    photos = _photos(tmp_path / "many", classes=4, per_class=250, seed=4)
    command = [*REPRLEARN, "embed", str(digits_run), "--data", f"folder:{photos}", "--out", str(tmp_path / "e"),
               "--engine", "ray", "--address", address, "--actors", "1", "--batch", "1"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "e").glob("part-*.parquet")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130 and "finished shards are kept" in stderr, stderr[-3000:]
    kept = sorted((tmp_path / "e").glob("part-*.parquet"))
    manifest = json.loads((tmp_path / "e" / EMBED_MANIFEST).read_text())
    assert 1 <= len(kept) < 4 and manifest["shard_size"] == 251 and not manifest["complete"]
    for shard in kept:
        assert len(_rows(shard)) > 0   # every shard under its name is whole
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards were already done" in done.stdout and "1000 embeddings" in done.stdout
    assert json.loads((tmp_path / "e" / EMBED_MANIFEST).read_text())["complete"]
    assert len(_rows(tmp_path / "e")) == 1000
