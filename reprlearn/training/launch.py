"""`reprlearn train --workers N`: N training processes on this machine under MultiWorkerMirroredStrategy.

Each worker is `python -m reprlearn.cli train ...` with `train.strategy=multi_worker` and a
TF_CONFIG naming all N on 127.0.0.1 (free ports); worker 0 is the chief and the only one that
writes the run folder and prints progress. If any worker fails or is killed, the others are
stopped and the command fails; the finished epochs are checkpointed, so running the same command
again resumes. On several hosts, start the same `reprlearn train` on each with its own TF_CONFIG
(see the README's "Scaling out"); the run folder must be on storage every worker can read.

Example:
    launch_local_workers(["configs/demo.yaml", "--out", "runs/mw"], workers=2, out=Path("runs/mw"))
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reprlearn.errors import ConfigError

_PR_SET_PDEATHSIG = 1


def _die_with_launcher() -> None:
    """In a worker, before it starts: Linux sends it SIGTERM when the launcher dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_environments(workers: int) -> list[dict[str, str]]:
    """The environment of each local worker: this one's, plus a TF_CONFIG for a cluster of `workers` on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)]}
    return [{**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            for i in range(workers)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_local_workers(train_args: list[str], workers: int, out: Path) -> int:
    """Runs `reprlearn train TRAIN_ARGS` as `workers` processes; returns 0 when all finish, else the failing code.

    Args:
        train_args: the `train` arguments (config, --out, --set, --resume, ...), without --workers or --force.
        workers: the number of processes, >= 2.
        out: the run folder, named in the message when a worker fails.
    """
    if workers < 2:
        raise ConfigError(f"--workers must be >= 2 (one process trains without it). Received: --workers={workers}")
    processes, logs = [], []
    # A stopped launcher stops its workers (which would otherwise wait for each other forever).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        for index, env in enumerate(worker_environments(workers)):
            command = [sys.executable, "-m", "reprlearn.cli", "train", *train_args,
                       "--set", "train.strategy=multi_worker"]
            if index == 0:
                processes.append(subprocess.Popen(command, env=env, preexec_fn=_die_with_launcher))
            else:  # non-chief workers print nothing unless they fail
                logs.append(tempfile.TemporaryFile(mode="w+"))
                processes.append(subprocess.Popen([*command, "--quiet"], env=env, stdout=logs[-1],
                                                  stderr=subprocess.STDOUT, preexec_fn=_die_with_launcher))
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                _stop(processes)
                if index > 0:
                    logs[index - 1].seek(0)
                    print(logs[index - 1].read()[-3000:], file=sys.stderr)
                print(f"reprlearn train: worker {index} exited with code {code}; the other workers were stopped. "
                      f"Finished epochs are checkpointed in {out}: run the same command to resume.", file=sys.stderr)
                return code if code > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        _stop(processes)
        signal.signal(signal.SIGTERM, previous)
        for log in logs:
            log.close()
