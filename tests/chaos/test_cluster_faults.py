"""The single node's fuzz and fault tests, the same functions, against a three-node
cluster with `[nats] replicas = 3`.

This module puts the cluster in the place of the session's server (`nats_server`, each
connection on the next node: a test's stacks, its client and its probes on different
nodes) and 3 in `replicas`, then holds the tests: pytest runs them here with these
fixtures, and in their own modules against the single server.

Which ones, and why: the fuzz whole (every request/reply subject against hostile bodies,
then every actor alive), and the faults whose path crosses JetStream or the routes
between nodes: work handed back and delivered again (503s, a stopping executor), the
delivery count that ends it, a fallback onto another model's queue, stored streams read
back from a replicated chunk stream, cancels and deadlines (the claims bucket's atomic
create on R3), and payloads near `max_payload` across routes. Left out, since they
decide in one process whatever the bus (admission's checks of names and bodies, which
the fuzz covers, unknown models, a host's idle and first-token deadlines, circuits), or
start servers of their own: they run against the single server only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bus.client import Client
from bus.subjects import Subjects
from tests import test_fuzz
from tests._cluster_fixtures import NodeByNode, running_cluster
from tests.test_hardening import (  # noqa: F401 - pytest runs the tests a module holds
    served,
    test_a_5mb_role_gets_a_short_bad_request_and_the_router_keeps_serving,
    test_a_reply_over_max_payload_is_payload_too_large,
    test_an_answer_over_max_payload_is_payload_too_large,
    test_headers_count_against_max_payload_before_sending,
)
from tests.test_spine_faults import (  # noqa: F401
    events,
    test_a_host_dying_mid_stream_ends_the_stream_with_an_error,
    test_a_host_that_stays_busy_ends_in_a_typed_error,
    test_a_model_slow_to_its_first_token_falls_back,
    test_a_stopping_executor_hands_back_work_it_has_not_started,
    test_busy_503_is_retried_on_another_host,
    test_cancel_drops_queued_work_before_it_reaches_a_host,
    test_cancel_stops_a_running_stream,
    test_work_past_its_deadline_never_reaches_a_host,
)

# The fuzz, then what it left running: in this order (the second reads what the first did).
fleet = test_fuzz.fleet
test_every_subject_answers_hostile_bodies_with_a_typed_error = (
    test_fuzz.test_every_subject_answers_hostile_bodies_with_a_typed_error
)
test_after_the_fuzzing_every_actor_runs_and_serves = (
    test_fuzz.test_after_the_fuzzing_every_actor_runs_and_serves
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nats_server() -> AsyncIterator[NodeByNode]:
    """A three-node cluster for this module's tests, in the single server's place."""
    async with running_cluster() as nodes:
        yield NodeByNode(nodes)


@pytest.fixture(scope="module")
def replicas() -> int:
    return 3


async def test_the_tests_here_run_across_the_cluster(
    sim_factory, stack_factory, client: Client, prefix: str
) -> None:
    """What this module's stacks provision is kept on the three nodes, and a stack sits
    on another node than its client: the fixtures above are in force."""
    sim = await sim_factory(models=["llama3.2:3b"])
    stack = await stack_factory([sim.url])
    info = await client.nc.jetstream().stream_info(Subjects(prefix).work_stream)
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    assert stack.nc is not None and stack.nc.connected_url != client.nc.connected_url
    assert (await client.generate("llama3.2:3b", "across", options={"num_predict": 2})).done
