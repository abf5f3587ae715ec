"""Connecting to Ray: a cluster by address (`--address`, else `RAY_ADDRESS`), or a local one started here.

An address is tried with a plain TCP connection first (`ADDRESS_TIMEOUT` seconds), because `ray.init` waits
much longer for a head that does not answer; the error names the address.

Example:
    ray = connect(None)                  # a local cluster on this machine's cores
    ray = connect("10.0.0.5:6379")       # the head of a cluster
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from reprlearn.errors import ClusterError, ConfigError

ADDRESS_TIMEOUT = 5.0
# A progress line off a terminal (a batch job's log): one a minute.
LOG_EVERY = 60.0


def require_ray():
    """The `ray` module, or ClusterError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `data` part of the extra)
    except ImportError:
        raise ClusterError("--engine ray needs Ray: pip install 'reprlearn[ray]'. Received: ray is not installed") \
            from None
    return ray


def check_count(name: str, value: int | None) -> None:
    """A count a user gave (`--actors`, `--batch`, `--workers`) is a positive integer, or ConfigError naming it."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}")


def _host_port(address: str) -> tuple[str, int] | None:
    """The head's host and port in `host:port`, `ray://host:port` or `http://host:port`; None for `auto`/`local`."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be host:port (the head node's GCS port, usually 6379) or "
                          f"ray://host:port. Received: --address={address!r}")
    return host, int(port)


def check_answers(address: str, timeout: float = ADDRESS_TIMEOUT) -> None:
    """ClusterError naming `address` unless a Ray head answers there within `timeout` seconds: one gRPC call to its
    GCS (Ray's own connect retries for much longer, and a port that something else holds also takes TCP)."""
    target = _host_port(address)
    if target is None or address.startswith("ray://"):  # a Ray Client server speaks another protocol
        if target is not None:
            _tcp_answers(address, target, timeout)
        return
    import grpc

    with grpc.insecure_channel(f"{target[0]}:{target[1]}") as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            call(b"", timeout=timeout)
        except grpc.RpcError as err:
            # An answer from a GCS: it may refuse a call without the cluster's token, but it is there.
            if err.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise ClusterError(f"no Ray cluster answers at {address} ({err.code().name.lower()}: "
                                   f"{err.details() or 'no reply'}); start one with `ray start --head`, or leave "
                                   f"--address out for a local cluster. Received: --address={address!r}") from None


def _tcp_answers(address: str, target: tuple[str, int], timeout: float) -> None:
    try:
        with socket.create_connection(target, timeout=timeout):
            return
    except OSError as err:
        raise ClusterError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one with `ray start "
                           f"--head`, or leave --address out for a local cluster. Received: --address={address!r}") \
            from None


def connect(address: str | None, num_cpus: int | None = None):
    """Joins the cluster at `address` (else `RAY_ADDRESS`), or starts a local one (`num_cpus`: its size, default
    every core); returns the `ray` module. Already connected (to that cluster, or with no address asked): nothing
    to do."""
    ray = require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_answers(address)
    if ray.is_initialized():
        if not address or address in ("auto", "local", ray.get_runtime_context().gcs_address):
            return ray
        ray.shutdown()  # connected elsewhere: join the cluster asked for
    logging.getLogger("ray").setLevel(logging.ERROR)
    options = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True,
               "configure_logging": True}
    try:
        if address and address != "local":
            ray.init(address=address, **options)
        else:  # "local": a new cluster, even where `ray start` runs one on this machine (join that with "auto")
            ray.init(address="local", num_cpus=num_cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"Ray could not connect to {address or 'a new local cluster'}: {err}. "
                           f"Received: --address={address!r}") from None
    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)   # Ray's own INFO/WARNING lines: reprlearn says what happens
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False   # reprlearn prints its own line (Progress)
    context.print_on_execution_start = False
    return ray


class Progress:
    """One line of progress: done/total files, files/s and ETA; rewritten in place on a terminal, printed once a
    minute (and at the end) otherwise."""

    def __init__(self, total: int, what: str, stream=None, done: int = 0):
        self.total, self.what, self.stream = total, what, stream or sys.stderr
        self.done, self.start_done = done, done
        self.started = self.last = time.monotonic()
        self.tty = self.stream.isatty()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = self.total - self.done
        eta = f"{left / rate:,.0f} s" if rate > 0 else "unknown"
        return f"{self.what}: {self.done:,}/{self.total:,} files, {rate:,.0f} files/s, ETA {eta}"

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.tty:
            print("\r" + self.line(), end="", file=self.stream, flush=True)
        elif now - self.last >= LOG_EVERY:
            print(self.line(), file=self.stream, flush=True)
            self.last = now

    def finish(self) -> None:
        print(("\r" if self.tty else "") + self.line(), file=self.stream, flush=True)
