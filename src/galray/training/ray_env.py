"""Connecting to Ray: the cluster a job was submitted to, or a local instance."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a local one.

    A local instance gets its dashboard on a free port and tells its workers that address
    (``RAY_API_SERVER_ADDRESS``).  Ray Train's placement-group cleaner asks the state API whether
    a controller is alive; with several local Ray instances on one machine the API cannot tell
    which to ask, and the workers of a Tune trial stopped early (ASHA) are never freed.
    """
    import socket

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        num_cpus=num_cpus,
        log_to_driver=log_to_driver,
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )
