"""Shared fixtures.  ``ray_session`` starts one local Ray instance for the whole test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance (2 CPUs, no log forwarding) shared by every test that asks for it.

    Starting Ray costs 5-15 s, so it starts once, on first use, and shuts down at the end of the
    session.  If the test process already runs Ray, that instance is reused and left running.
    """
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        except Exception:
            # Some Ray builds need the dashboard process; fall back to Ray's default.
            ray.init(num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
