"""Pure logic of the gateway: the routing table, the choices made from it, and
the in-memory call statistics. No database, no network."""

import random
from collections import Counter

import pytest

from gateway.routing import AuthResult, RoutingTable, ServiceRoute, VersionRoute, authorize, build_table
from gateway.stats import CallStats
from services.contract import LATENCY_BUCKET_COUNT, LATENCY_BUCKETS_MS, percentile_ms, secret_hash

HOST = "127.0.0.1"
NOW = 1_700_000_000.0
SVC_A = "0d6f3c1e-0000-4000-8000-00000000000a"
SVC_B = "0d6f3c1e-0000-4000-8000-00000000000b"


def rows_for(*instances):
    """Service rows as the loader returns them, for one service of owner 1."""
    return [(SVC_A, 1, "running", config_id, weight, "/predict", port) for config_id, weight, port in instances]


def table_of(service_rows, tokens=(), app_codes=(), previous=None) -> RoutingTable:
    token_rows = [(secret_hash(secret), owner_id, expires_at) for secret, owner_id, expires_at in tokens]
    code_rows = [(secret_hash(secret), service_id) for secret, service_id in app_codes]
    return build_table(service_rows, token_rows, code_rows, HOST, previous)


# --- build_table ----------------------------------------------------------------


def test_build_table_groups_instances_by_service_and_version():
    table = table_of(
        [
            (SVC_A, 1, "running", 10, 70, "/predict", 30002),
            (SVC_A, 1, "running", 10, 70, "/predict", 30001),
            (SVC_A, 1, "running", 11, 30, "/v2/predict", 30003),
            (SVC_B, 2, "stopped", 20, 100, "/predict", None),
        ]
    )
    assert set(table.services) == {SVC_A, SVC_B}
    a = table.services[SVC_A]
    assert (a.owner_id, a.status) == (1, "running")
    assert [(v.config_id, v.weight, v.predict_path) for v in a.versions] == [
        (10, 70, "/predict"),
        (11, 30, "/v2/predict"),
    ]
    # Sorted, so every process and every reload agree on the order.
    assert a.versions[0].upstreams == [(HOST, 30001), (HOST, 30002)]
    assert a.versions[1].upstreams == [(HOST, 30003)]
    # A version without a healthy instance is still listed, with no upstream.
    b = table.services[SVC_B]
    assert b.status == "stopped"
    assert [v.upstreams for v in b.versions] == [[]]


def test_build_table_indexes_credentials_by_hash_only():
    table = table_of([], tokens=[("rts_Xq8token", 7, NOW + 60)], app_codes=[("app_Zp3code", SVC_A)])
    assert table.tokens == {secret_hash("rts_Xq8token"): (7, NOW + 60)}
    assert table.app_codes == {secret_hash("app_Zp3code"): SVC_A}
    assert "Xq8token" not in repr(table) and "Zp3code" not in repr(table)


def test_build_table_accepts_uuid_service_ids():
    import uuid

    service_id = uuid.UUID(SVC_A)
    table = build_table(
        [(service_id, 1, "running", 10, 100, "/predict", 30001)], [], [(secret_hash("c"), service_id)], HOST
    )
    assert SVC_A in table.services
    assert table.app_codes[secret_hash("c")] == SVC_A


# --- authorize ------------------------------------------------------------------


@pytest.fixture
def auth_table() -> RoutingTable:
    return table_of(
        [
            (SVC_A, 1, "running", 10, 100, "/predict", 30001),
            (SVC_B, 2, "running", 20, 100, "/predict", 30002),
        ],
        tokens=[("tok-owner", 1, NOW + 3600), ("tok-other", 2, NOW + 3600), ("tok-expired", 1, NOW - 1)],
        app_codes=[("code-a", SVC_A), ("code-b", SVC_B)],
    )


@pytest.mark.parametrize(
    ("service_id", "token", "app_code", "expected"),
    [
        (SVC_A, None, None, AuthResult.UNAUTHENTICATED),
        (SVC_A, "tok-unknown", None, AuthResult.UNAUTHENTICATED),
        (SVC_A, "tok-expired", None, AuthResult.UNAUTHENTICATED),
        (SVC_A, None, "code-unknown", AuthResult.UNAUTHENTICATED),
        (SVC_A, "tok-owner", None, AuthResult.OK),
        (SVC_A, "tok-other", None, AuthResult.NOT_FOUND),
        ("no-such-service", "tok-owner", None, AuthResult.NOT_FOUND),
        (SVC_A, None, "code-a", AuthResult.OK),
        (SVC_A, None, "code-b", AuthResult.NOT_FOUND),
        ("no-such-service", None, "code-a", AuthResult.NOT_FOUND),
        # Either credential may open the service.
        (SVC_A, "tok-unknown", "code-a", AuthResult.OK),
        (SVC_A, "tok-other", "code-a", AuthResult.OK),
        (SVC_A, "tok-expired", "code-b", AuthResult.NOT_FOUND),
    ],
)
def test_authorize(auth_table, service_id, token, app_code, expected):
    result, service = authorize(auth_table, service_id, token, app_code, NOW)
    assert result == expected
    if expected == AuthResult.OK:
        assert service is auth_table.services[service_id]
    else:
        assert service is None


def test_authorize_treats_a_token_as_expired_from_its_expiry_on():
    table = table_of(rows_for((10, 100, 30001)), tokens=[("tok", 1, NOW)])
    assert authorize(table, SVC_A, "tok", None, NOW - 0.001)[0] == AuthResult.OK
    assert authorize(table, SVC_A, "tok", None, NOW)[0] == AuthResult.UNAUTHENTICATED


# --- pick_version ---------------------------------------------------------------


def test_pick_version_honours_weights():
    service = table_of(rows_for((10, 70, 30001), (11, 20, 30002), (12, 10, 30003))).services[SVC_A]
    rng = random.Random(1234)
    picks = Counter(service.pick_version(rng).config_id for _ in range(20_000))
    assert abs(picks[10] / 20_000 - 0.70) < 0.02
    assert abs(picks[11] / 20_000 - 0.20) < 0.02
    assert abs(picks[12] / 20_000 - 0.10) < 0.02


def test_pick_version_never_picks_a_zero_weight_version():
    service = table_of(rows_for((10, 100, 30001), (11, 0, 30002))).services[SVC_A]
    rng = random.Random(1)
    assert {service.pick_version(rng).config_id for _ in range(500)} == {10}


def test_pick_version_skips_versions_without_an_instance_left_to_try():
    service = table_of(rows_for((10, 90, 30001), (11, 10, 30002), (11, 10, 30003))).services[SVC_A]
    rng = random.Random(2)
    exclude = {(HOST, 30001)}
    assert {service.pick_version(rng, exclude).config_id for _ in range(200)} == {11}
    exclude |= {(HOST, 30002)}
    assert {service.pick_version(rng, exclude).config_id for _ in range(200)} == {11}
    exclude |= {(HOST, 30003)}
    assert service.pick_version(rng, exclude) is None


def test_pick_version_is_none_without_healthy_instances():
    table = build_table([(SVC_A, 1, "running", 10, 100, "/predict", None)], [], [], HOST)
    assert table.services[SVC_A].pick_version(random.Random(0)) is None


def test_pick_version_is_reproducible_with_a_seeded_rng():
    service = table_of(rows_for((10, 50, 30001), (11, 50, 30002))).services[SVC_A]

    def sequence(seed):
        rng = random.Random(seed)
        return [service.pick_version(rng).config_id for _ in range(50)]

    assert sequence(99) == sequence(99)
    assert set(sequence(99)) == {10, 11}


# --- pick_upstream ----------------------------------------------------------------


def test_pick_upstream_round_robins_over_the_instances():
    version = VersionRoute(10, 100, "/predict", [(HOST, 1), (HOST, 2), (HOST, 3)])
    picks = [version.pick_upstream(set())[1] for _ in range(9)]
    assert picks == [1, 2, 3, 1, 2, 3, 1, 2, 3]


def test_pick_upstream_skips_excluded_instances():
    version = VersionRoute(10, 100, "/predict", [(HOST, 1), (HOST, 2), (HOST, 3)])
    picks = [version.pick_upstream({(HOST, 2)})[1] for _ in range(6)]
    assert picks == [1, 3, 1, 3, 1, 3]


def test_pick_upstream_is_none_when_every_instance_is_excluded():
    version = VersionRoute(10, 100, "/predict", [(HOST, 1), (HOST, 2)])
    assert version.pick_upstream({(HOST, 1), (HOST, 2)}) is None
    assert VersionRoute(11, 100, "/predict", []).pick_upstream(set()) is None


def test_round_robin_position_is_kept_across_reloads():
    rows = rows_for((10, 100, 30001), (10, 100, 30002), (10, 100, 30003))
    table = table_of(rows)
    version = table.services[SVC_A].versions[0]
    assert [version.pick_upstream(set())[1] for _ in range(2)] == [30001, 30002]
    reloaded = table_of(rows, previous=table)
    version = reloaded.services[SVC_A].versions[0]
    assert [version.pick_upstream(set())[1] for _ in range(4)] == [30003, 30001, 30002, 30003]


def test_round_robin_position_of_a_new_version_starts_at_the_first_instance():
    table = table_of(rows_for((10, 100, 30001), (10, 100, 30002)))
    table.services[SVC_A].versions[0].pick_upstream(set())
    reloaded = table_of(rows_for((10, 100, 30001), (10, 100, 30002), (11, 0, 30005), (11, 0, 30004)), previous=table)
    new_version = reloaded.services[SVC_A].versions[1]
    assert new_version.pick_upstream(set()) == (HOST, 30004)


def test_round_robin_spreads_evenly_when_an_instance_joins():
    rows = rows_for((10, 100, 30001), (10, 100, 30002))
    table = table_of(rows)
    for _ in range(5):
        table.services[SVC_A].versions[0].pick_upstream(set())
    table = table_of(rows + rows_for((10, 100, 30003)), previous=table)
    version = table.services[SVC_A].versions[0]
    assert Counter(version.pick_upstream(set())[1] for _ in range(30)) == {30001: 10, 30002: 10, 30003: 10}


def test_service_route_defaults():
    service = ServiceRoute(SVC_A, 1, "running")
    assert service.versions == [] and service.pick_version(random.Random(0)) is None


# --- stats ---------------------------------------------------------------------------


def test_record_counts_calls_failures_and_latency_buckets():
    stats = CallStats()
    stats.record(SVC_A, 10, 0.2, False)
    stats.record(SVC_A, 10, 0.5, False)  # upper bounds are inclusive
    stats.record(SVC_A, 10, 0.51, True)
    stats.record(SVC_A, 11, 120_000, True)  # slower than the last bound
    batch = stats.take()
    calls, failed, histogram, _ = batch[(SVC_A, 10)]
    assert (calls, failed) == (3, 1)
    assert len(histogram) == LATENCY_BUCKET_COUNT == len(LATENCY_BUCKETS_MS) + 1
    assert histogram[0] == 2 and histogram[1] == 1 and sum(histogram) == 3
    calls, failed, histogram, _ = batch[(SVC_A, 11)]
    assert (calls, failed) == (1, 1)
    assert histogram[-1] == 1 and sum(histogram) == 1


def test_take_empties_the_batch():
    stats = CallStats()
    stats.record(SVC_A, 10, 3, False)
    assert stats.take()
    assert stats.take() == {}


def test_put_back_merges_a_failed_flush_into_the_next_batch():
    stats = CallStats()
    stats.record(SVC_A, 10, 3, False)
    stats.record(SVC_A, 10, 3, True)
    failed_flush = stats.take()
    stats.record(SVC_A, 10, 7, False)
    stats.record(SVC_B, 20, 7, True)
    stats.put_back(failed_flush)
    batch = stats.take()
    calls, failed, histogram, _ = batch[(SVC_A, 10)]
    assert (calls, failed) == (3, 1)
    three = LATENCY_BUCKETS_MS.index(3)
    seven = LATENCY_BUCKETS_MS.index(7)
    assert histogram[three] == 2 and histogram[seven] == 1 and sum(histogram) == 3
    assert batch[(SVC_B, 20)][:2] == [1, 1]


def test_put_back_into_an_empty_batch_keeps_the_counts():
    stats = CallStats()
    stats.record(SVC_A, 10, 1, True)
    batch = stats.take()
    stats.put_back(batch)
    again = stats.take()
    assert again[(SVC_A, 10)][0] == 1 and again[(SVC_A, 10)][1] == 1


def histogram_of(latencies_ms):
    stats = CallStats()
    for latency in latencies_ms:
        stats.record(SVC_A, 10, latency, False)
    return stats.take()[(SVC_A, 10)][2]


def test_percentile_is_the_upper_bound_of_the_bucket_holding_that_rank():
    histogram = histogram_of([0.3] * 50 + [4] * 49 + [250])
    assert percentile_ms(histogram, 0.5) == 0.5
    assert percentile_ms(histogram, 0.51) == 4
    assert percentile_ms(histogram, 0.99) == 4
    assert percentile_ms(histogram, 1.0) == 300


def test_percentile_of_no_calls_is_none():
    assert percentile_ms([0] * LATENCY_BUCKET_COUNT, 0.5) is None


def test_percentile_beyond_the_last_bound_is_infinite():
    assert percentile_ms(histogram_of([90_000]), 0.5) == float("inf")
