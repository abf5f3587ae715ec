"""The file index's stat and checks as Ray tasks: `with parallel_files(ray_map): load_spec(...)` spreads them over
the cluster's nodes (each task one chunk of files, results in the listing's order), so the index equals the
one-thread build row for row.

Example:
    connect(address)
    with parallel_files(ray_map):
        data = load_spec("folder:/shared/photos", decoding=run.decoding)
"""

from __future__ import annotations

from reprlearn.cluster.engine import require_ray
from reprlearn.errors import ClusterError


def _on_node(function, *arguments):
    """`function(*arguments)` in a task; a file this node cannot open is named with the node."""
    try:
        return function(*arguments)
    except OSError as err:
        import ray

        raise ClusterError(f"node {ray.util.get_node_ip_address()} cannot read {err.filename} ({err.strerror}): the "
                           "data must be at the same path on every node. Received: the file index's check") from None


def ray_map(function, arguments: list) -> list:
    """`[function(*argument) for argument in arguments]` as Ray tasks (one CPU each), in order."""
    ray = require_ray()
    task = ray.remote(num_cpus=1)(_on_node)
    try:
        return ray.get([task.remote(function, *argument) for argument in arguments])
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        raise cause if isinstance(cause, ClusterError) else ClusterError(
            f"a file index task failed on the cluster: {str(err).splitlines()[0]}. Received: the file index") from None
