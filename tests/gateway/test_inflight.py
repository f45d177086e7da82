"""The pure parts of a drain: calls in flight counted per version of the route
they hold, and the drain notification's payload."""

from gateway.keeper import parse_batch
from gateway.routing import InFlight, ServiceRoute, VersionRoute
from services.contract import RoutingNotice


def route(*config_ids: int) -> ServiceRoute:
    return ServiceRoute("svc", 1, "running", versions=[VersionRoute(c, 50, "/predict") for c in config_ids])


def test_a_call_counts_against_every_version_of_the_route_it_holds_until_released():
    inflight = InFlight()
    first = inflight.hold(route(1, 2))
    second = inflight.hold(route(2, 3))

    assert not inflight.is_idle([1]) and not inflight.is_idle([3])
    inflight.release(first)
    assert inflight.is_idle([1])
    assert not inflight.is_idle([2])  # the second call may still go to version 2
    inflight.release(second)
    assert inflight.is_idle([1, 2, 3])
    assert inflight.counts == {}


def test_a_drain_payload_round_trips_and_is_parsed_apart_from_syncs():
    payload = RoutingNotice.drain_payload("tok", [7, 9])

    changes = parse_batch([f"{RoutingNotice.SYNC}:abc", payload, "s:svc"], "gw")

    assert payload == "d:tok 7,9"
    assert changes.drains == [("tok", (7, 9))]
    assert changes.syncs == ["abc"]
    assert changes.services == {"svc"}
    assert RoutingNotice.parse_drain("tok 7,x,9") == ("tok", (7, 9))
