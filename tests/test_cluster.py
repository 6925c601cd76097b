"""deploy/nats/cluster.conf against the single node's nats.conf (a node SIGKILLed under
load: tests/chaos/test_leader.py)."""

from __future__ import annotations

from bus.server import packaged_config
from tests._cluster_fixtures import DEPLOY, config_limits


def test_the_cluster_config_has_the_single_nodes_limits() -> None:
    """deploy/nats/cluster.conf sets what nats.conf sets (the payload ollamesh's typed
    `payload_too_large` is computed against, the slow-consumer room)."""

    single = config_limits(packaged_config())
    assert single and config_limits(DEPLOY / "cluster.conf") == single
