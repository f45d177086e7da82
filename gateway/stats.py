"""Call statistics aggregated in memory and handed to the store once a second."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds, in milliseconds, of the latency histogram's buckets; one more
# bucket holds everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500,
    750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip
LATENCY_BUCKET_COUNT = len(LATENCY_BUCKETS_MS) + 1


class CallStats:
    def __init__(self) -> None:
        self._batch: dict[tuple[str, int], list] = {}
        self._used_tokens: set[str] = set()

    def token_used(self, token_hash: str) -> None:
        self._used_tokens.add(token_hash)

    def take_used_tokens(self) -> set[str]:
        used, self._used_tokens = self._used_tokens, set()
        return used

    def record(self, service_id: str, config_id: int, latency_ms: float, is_failed: bool) -> None:
        entry = self._batch.get((service_id, config_id))
        if entry is None:
            entry = self._batch[(service_id, config_id)] = [0, 0, [0] * LATENCY_BUCKET_COUNT]
        entry[0] += 1
        if is_failed:
            entry[1] += 1
        entry[2][bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1

    def take(self) -> dict[tuple[str, int], list]:
        batch, self._batch = self._batch, {}
        return batch

    def put_back(self, batch: dict[tuple[str, int], list]) -> None:
        """Return a batch whose flush failed, so its counts go out with the next one."""
        for key, (calls, failed, histogram) in batch.items():
            entry = self._batch.get(key)
            if entry is None:
                self._batch[key] = [calls, failed, histogram]
            else:
                entry[0] += calls
                entry[1] += failed
                entry[2] = [a + b for a, b in zip(entry[2], histogram, strict=True)]


def percentile_ms(histogram: list[int], fraction: float) -> float | None:
    """The upper bound of the bucket holding the given fraction of calls."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")
