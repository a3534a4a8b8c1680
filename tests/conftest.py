"""Shared fixtures.  ``ray_session`` starts one local Ray instance for the whole test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Models fetched from a registry are cached under ``$GALRAY_CACHE``: a per-session folder
    here, so tests neither read nor fill the user's ``~/.cache/galray``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GALRAY_CACHE", str(tmp_path_factory.mktemp("galray-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance (2 CPUs, no log forwarding) shared by every test that asks for it.

    Starting Ray costs 5-15 s, so it starts once, on first use, and shuts down at the end of the
    session.  If the test process already runs Ray, that instance is reused and left running.
    It keeps Ray's dashboard (started by :func:`~galray.training.ray_env.init_ray`): Ray
    Train frees the workers of a Tune trial stopped early only through the dashboard's state API.
    """
    import ray
    import ray.data

    from galray.training.ray_env import init_ray

    started = not ray.is_initialized()
    if started:
        init_ray(num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_join(ray_session) -> dict[str, str]:
    """What a driver in a subprocess adds to its environment to join the shared instance
    (``RAY_ADDRESS``, with its token: ``RAY_AUTH_MODE=token``, as the README tells cluster
    clients) instead of starting a Ray of its own (5-15 s each on 2 cores)."""
    address = ray_session.get_runtime_context().gcs_address
    return {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
