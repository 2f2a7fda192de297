"""Every use of Ray's private API, in one place.

Ray keeps no stability promise for these names; a new Ray release means checking this module
first (tests/study/test_ray_local_binding.py fails when the trick below stops working).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

__all__ = ["loopback_node"]


@contextmanager
def loopback_node(init_kwargs: Mapping[str, Any]) -> Iterator[None]:
    """While a local Ray starts inside this block (`ray.init(**init_kwargs)`), its node IP is
    the loopback address; unless `init_kwargs` choose the node's IP themselves.

    Why private: Ray binds its servers (GCS, raylet, object manager, workers' gRPC, the agents'
    HTTP and metrics ports) to all interfaces unless the node IP is a loopback address, and
    `ray.init(_node_ip_address="127.0.0.1")` does not help: Ray turns a loopback address back
    into the machine's outward IP (`services.resolve_ip_for_localhost`) unless multi-node
    clusters are disabled. That switch is public only as an environment variable read once at
    import (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which would also break joining a cluster
    later in the same process), so it is flipped here on the imported constant, only for the
    duration of one local `ray.init`. Ray (2.60 checked) reads it at call time, in
    `ray._private.services.get_node_ip_address`; once started, the node's own IP is used.
    """
    from ray._private import ray_constants

    if init_kwargs.get("_node_ip_address"):  # the caller's choice (a private ray.init keyword)
        yield
        return
    missing = object()
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", missing)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is missing:
            del ray_constants.ENABLE_RAY_CLUSTER
        else:
            ray_constants.ENABLE_RAY_CLUSTER = before
