"""Host choice: whether this host should take the next request for a model, now.

Executors pull work, so the choice of host is made by each host declining to pull
while another host is the better place for the next request. Policy only: it reads the
load board (every host's slots, in-flight work, warmth and speed for the model) and
answers yes or no; the puller asks again whenever the board changes.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.internal import ModelLoad

__all__ = ["HOST_STRATEGIES", "should_take"]

HOST_STRATEGIES = ("round-robin", "least-loaded", "adaptive")


def _free(load: ModelLoad) -> bool:
    return load.in_flight < load.slots


def _service_ms(load: ModelLoad, typical: float) -> float:
    return load.service_ms if load.service_ms is not None else typical


def should_take(strategy: str, me: str, loads: Mapping[str, ModelLoad]) -> bool:
    """Whether host `me` (a key of `loads`, with a free slot) takes the next request.

    - Warm first: while some host that has the model loaded has a free slot, hosts that
      would have to load it wait.
    - round-robin: every host takes the same share, whatever its speed; the host that took
      the fewest goes next (even while busy, as a push balancer would queue at it).
    - least-loaded: the host with the lowest in-flight / slots goes next.
    - adaptive: among hosts with a free slot, the one that should finish the request
      soonest goes next: its measured service time, scaled up by how busy it is (a busy
      GPU decodes each stream slower). A host without history counts as average, so it
      gets a fair share rather than all traffic or none.
    """
    mine = loads[me]
    if mine.slots <= 0:
        return True  # not on the board yet: nothing to weigh against
    serving = {k: v for k, v in loads.items() if v.slots > 0}
    if not mine.warm and any(v.warm and _free(v) for k, v in serving.items() if k != me):
        return False
    # Compare only with hosts of the same warmth: a cold host past this point knows that
    # no warm host has a free slot.
    peers = {k: v for k, v in serving.items() if v.warm == mine.warm}
    if strategy == "round-robin":
        return mine.taken <= min(v.taken for v in peers.values())
    # This host asks with a free slot of its own, whatever its pulls in flight claim.
    free = [v for k, v in peers.items() if k == me or _free(v)]
    if strategy == "least-loaded":
        return mine.in_flight / mine.slots <= min(v.in_flight / v.slots for v in free)
    known = [v.service_ms for v in free if v.service_ms is not None]
    typical = sum(known) / len(known) if known else 1.0

    def cost(v: ModelLoad) -> float:
        return _service_ms(v, typical) * (1 + v.in_flight / v.slots)

    return cost(mine) <= min(cost(v) for v in free)
