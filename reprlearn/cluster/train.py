"""`reprlearn train --engine ray --workers N`: the multi-worker run of `--workers N`, with Ray placing the workers.

Ray starts N actors (one CPU each, spread over the nodes; one GPU each where the cluster has GPUs). Each reports
its node's address and a free port; from those the driver writes every worker's `TF_CONFIG`, and each actor runs
`python -m reprlearn.cli train ... --set train.strategy=multi_worker` with it, in the driver's working folder: the
same processes `--workers N` starts on one host, so global-batch mining, the chief's run folder, the folder lock
and resume are the ones tested there. The run folder and the data must be at the same path on every node.

When a worker is lost (its process killed by a signal, or its node or actor gone), every worker is stopped and the
job starts again, up to `restarts` times: the new workers resume from the last finished epoch's checkpoint, as
running the same command again does. A worker that exits with an error (a bad config, unreadable data) stops the
job at once.

Example:
    train_workers(["configs/demo.yaml", "--out", "runs/demo"], workers=2, out=Path("runs/demo"), address=None)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from reprlearn.cluster.engine import check_count, connect
from reprlearn.errors import ClusterError, ConfigError

# Seconds between checks that every worker is still there.
POLL = 1.0
# Seconds to wait for the cluster to place every worker.
PLACEMENT_TIMEOUT = 120.0
# Lines of a failed non-chief worker's output shown.
TAIL_LINES = 40


class _TrainWorker:
    """One training process on a node: `address` names a free port there, `run` trains with a `TF_CONFIG`."""

    def address(self) -> str:
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            return f"{host}:{probe.getsockname()[1]}"

    def run(self, command: list[str], tf_config: dict, cwd: str, chief: bool):
        """Trains; yields the chief's output line by line (the driver prints it), then `(exit code, the end of a
        non-chief's output)`."""
        import subprocess

        from reprlearn.training.launch import _die_with_launcher

        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        with subprocess.Popen(command if chief else [*command, "--quiet"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_launcher) as process:
            tail = []
            for line in process.stdout:
                if chief:
                    yield line
                else:
                    tail = (tail + [line])[-TAIL_LINES:]
        yield process.returncode, "".join(tail)


def train_workers(train_args: list[str], workers: int, out: Path, address: str | None, restarts: int = 2) -> int:
    """Runs `reprlearn train TRAIN_ARGS` as `workers` Ray actors; returns 0 when the run finishes, else the failing
    worker's exit code once `restarts` further attempts have failed too.

    Args:
        train_args: the `train` arguments (config, --out, --set, --resume, ...), without --workers or --force; paths
            as every node sees them (made absolute here, against this working folder).
        workers: the number of workers, >= 2.
        out: the run folder, named in the message when the job fails.
        address: a Ray cluster (`host:port`); None: `RAY_ADDRESS`, else a local cluster.
        restarts: how many times a job whose worker was lost starts again (resuming from its checkpoint).
    """
    check_count("--workers", workers)
    if workers < 2:
        raise ConfigError(f"--workers must be >= 2 (one process trains without it). Received: --workers={workers}")
    if restarts < 0:
        raise ConfigError(f"--restarts must be >= 0. Received: --restarts={restarts}")
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    slots = int(ray.cluster_resources().get("GPU" if gpus else "CPU", 0))
    if slots < workers:
        raise ClusterError(f"the cluster has {slots} {'GPUs' if gpus else 'CPUs'} for {workers} workers (one each). "
                           f"Received: --workers={workers}")
    command = [sys.executable, "-m", "reprlearn.cli", "train", *train_args, "--set", "train.strategy=multi_worker"]
    bundle = {"CPU": 1, **({"GPU": 1} if gpus else {})}
    actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(_TrainWorker)
    for attempt in range(restarts + 1):
        failure = _attempt(ray, actor, bundle, command, workers)
        if failure is None:
            return 0
        index, code, log = failure
        if log:
            print(log, file=sys.stderr)
        # A lost worker (killed by a signal, its actor or node gone) is worth another start; a worker that exited
        # with an error (a bad config, data it cannot read) would fail again.
        again = attempt < restarts and (isinstance(code, str) or code < 0)
        print(f"reprlearn train: worker {index} {code if isinstance(code, str) else f'exited with code {code}'}; "
              f"the other workers were stopped. "
              + (f"Starting again from the last checkpoint in {out} ({attempt + 1} of {restarts} restarts)."
                 if again else f"Finished epochs are checkpointed in {out}: run the same command to resume."),
              file=sys.stderr)
    return code if isinstance(code, int) and code > 0 else 1


def _attempt(ray, actor, bundle: dict, command: list[str], workers: int):
    """One start of the job: None when every worker finished, else `(worker, exit code or what happened, log)`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group([bundle] * workers, strategy="SPREAD")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(group)
        raise ClusterError(f"the cluster could not place {workers} workers ({bundle} each) within "
                           f"{PLACEMENT_TIMEOUT:.0f} s: its resources are taken. Received: --workers={workers}") \
            from None
    handles = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
               for i in range(workers)]
    try:
        cluster = {"worker": ray.get([handle.address.remote() for handle in handles])}
        streams = [handle.run.options(num_returns="streaming").remote(
            command, {"cluster": cluster, "task": {"type": "worker", "index": i}}, os.getcwd(), i == 0)
            for i, handle in enumerate(handles)]
        results = [None] * workers
        printer = threading.Thread(target=_follow, args=(ray, streams[0], results, 0), daemon=True)
        printer.start()
        for index in range(1, workers):
            threading.Thread(target=_follow, args=(ray, streams[index], results, index), daemon=True).start()
        while True:
            for index, result in enumerate(results):
                if result is not None and result[0] != 0:
                    return index, *result
            if all(result is not None for result in results):
                printer.join()
                return None
            time.sleep(POLL)
    finally:
        for handle in handles:
            ray.kill(handle)  # its training process gets SIGTERM (see training.launch._die_with_launcher)
        ray.util.remove_placement_group(group)



def _follow(ray, stream, results: list, index: int) -> None:
    """Reads one worker's stream: prints the chief's lines, and stores `(exit code, log)` in `results[index]`
    (`(what happened, "")` when the actor or its node is lost)."""
    try:
        for ref in stream:
            item = ray.get(ref)
            if isinstance(item, str):
                print(item, end="", flush=True)
            else:
                results[index] = item
                return
        results[index] = ("ended without an exit code", "")
    except ray.exceptions.RayError as err:  # the actor or its node died
        results[index] = (f"was lost ({type(err).__name__})", "")
