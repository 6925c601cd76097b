"""deploy/nats/cluster.conf against the single node's nats.conf (a node SIGKILLed under
load: tests/chaos/test_leader.py)."""

from __future__ import annotations

import re
from pathlib import Path

from bus.server import packaged_config
from tests._cluster_fixtures import DEPLOY


def test_the_cluster_config_has_the_single_nodes_limits() -> None:
    """deploy/nats/cluster.conf sets what nats.conf sets (the payload ollamesh's typed
    `payload_too_large` is computed against, the slow-consumer room)."""

    def limits(path: Path) -> dict[str, str]:
        found = re.findall(
            r"^\s*(max_\w+|write_deadline|ping_interval):\s*(\S+)", path.read_text(), re.M
        )
        return dict(found)

    single = limits(packaged_config())
    assert single and limits(DEPLOY / "cluster.conf") == single
