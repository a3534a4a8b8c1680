"""Connecting to Ray: the cluster a job was submitted to, or a local instance.

A local instance listens on 127.0.0.1 only -- every port it opens: GCS, raylet, object manager,
core workers, dashboard, dashboard and runtime-env agents, and the Prometheus metrics export,
which has no token.  Ray has no option for that: its gRPC servers and agents listen on all
interfaces unless the node's address is 127.0.0.1, and ``ray.init(_node_ip_address="127.0.0.1")``
is rewritten to the machine's routable address on Linux.  Ray keeps a local-only node (as on
macOS and Windows) while ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is false (environment
variable ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once when Ray is imported), so
:func:`init_ray` clears it for the duration of ``ray.init``.  ``tests/test_security.py`` checks
every listening socket of the instance.  A driver that joins such an instance
(``RAY_ADDRESS=127.0.0.1:PORT``, nothing at that port on the routable address) connects the
same way, or Ray would look for it on the routable address.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"


def init_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a local
    instance bound to 127.0.0.1.

    A local instance gets its dashboard on a free port and tells its workers that address
    (``RAY_API_SERVER_ADDRESS``).  Ray Train's placement-group cleaner asks the state API whether
    a controller is alive; with several local Ray instances on one machine the API cannot tell
    which to ask, and the workers of a Tune trial stopped early (ASHA) are never freed.
    """
    import ray

    from galray import console

    if ray.is_initialized():
        return
    # the galray CLI: Ray's logs and its workers' output into the command's log file
    console.adopt_library_loggers()
    log_to_driver = console.ray_log_to_driver(log_to_driver)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if _loopback_only(address):  # a local instance of galray's: reach it where it listens
            with _local_only_node():
                ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver, _node_ip_address=LOOPBACK)
        else:
            ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver)
        console.route_ray_worker_output()
        return
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    with _local_only_node():
        ray.init(
            num_cpus=num_cpus,
            log_to_driver=log_to_driver,
            _node_ip_address=LOOPBACK,
            dashboard_host=LOOPBACK,
            dashboard_port=port,
            runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{port}"}},
        )
    console.route_ray_worker_output()


def _loopback_only(address: str) -> bool:
    """Whether ``RAY_ADDRESS`` names a GCS that listens on this machine's loopback interface only
    (a local instance of galray's): the address is ``127.0.0.1:PORT`` or ``localhost:PORT`` and
    nothing answers at that port on the routable address.  Ray rewrites a loopback address to
    the routable one before connecting, which reaches an instance started by ``ray start``
    (listening on every interface, its node registered under the routable address) but not
    one of galray's; joining the latter as a local-only node is the only way in, and joining
    the former that way finds no node of that address."""
    host, _, port = address.rpartition(":")
    if "://" in address or host not in (LOOPBACK, "localhost") or not port.isdigit():
        return False
    try:  # the address a route out leaves from (no packet is sent), as Ray finds its own
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect(("8.8.8.8", 80))
            routable = udp.getsockname()[0]
    except OSError:  # no route out: only loopback to listen on
        return True
    if routable == LOOPBACK:
        return True
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((routable, int(port))) != 0


@contextlib.contextmanager
def _local_only_node() -> Iterator[None]:
    """Let ``ray.init`` keep 127.0.0.1 as the node address (see the module docstring)."""
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved is None:
            del ray_constants.ENABLE_RAY_CLUSTER
        else:
            ray_constants.ENABLE_RAY_CLUSTER = saved
