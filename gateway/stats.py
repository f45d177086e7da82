"""Call statistics aggregated in memory and handed to the store once a second."""

from __future__ import annotations

from services.contract import LATENCY_BUCKET_COUNT, latency_bucket


class CallStats:
    def __init__(self) -> None:
        self._batch: dict[tuple[str, int], list] = {}
        self._used_tokens: set[str] = set()

    def token_used(self, token_hash: str) -> None:
        self._used_tokens.add(token_hash)

    def take_used_tokens(self) -> set[str]:
        used, self._used_tokens = self._used_tokens, set()
        return used

    def record(
        self, service_id: str, config_id: int, latency_ms: float, is_failed: bool, *, is_limited: bool = False
    ) -> None:
        """One call: [calls, failed, latency histogram, refused by the traffic limit] per version."""
        entry = self._batch.get((service_id, config_id))
        if entry is None:
            entry = self._batch[(service_id, config_id)] = [0, 0, [0] * LATENCY_BUCKET_COUNT, 0]
        entry[0] += 1
        if is_failed or is_limited:
            entry[1] += 1
        entry[2][latency_bucket(latency_ms)] += 1
        if is_limited:
            entry[3] += 1

    def take(self) -> dict[tuple[str, int], list]:
        batch, self._batch = self._batch, {}
        return batch

    def put_back(self, batch: dict[tuple[str, int], list]) -> None:
        """Return a batch whose flush failed, so its counts go out with the next one."""
        for key, (calls, failed, histogram, limited) in batch.items():
            entry = self._batch.get(key)
            if entry is None:
                self._batch[key] = [calls, failed, histogram, limited]
            else:
                entry[0] += calls
                entry[1] += failed
                entry[2] = [a + b for a, b in zip(entry[2], histogram, strict=True)]
                entry[3] += limited
