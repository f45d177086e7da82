"""The traffic limit: at most N calls per second to a service, over every
gateway process together. Each process counts the calls of the current second
in Redis (one INCR per call, only for services that have a limit), so two
processes each letting N through cannot happen.

Without Redis, calls go through unlimited rather than fail: the limit protects
a model from too many calls, it must never be why a call fails.
"""

from __future__ import annotations

import logging
import time

from redis import asyncio as redis_asyncio
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# After Redis failed to answer, calls go unlimited for this long before it is tried again.
REDIS_RETRY_SECONDS = 1.0
KEY_PREFIX = "rts:limit:"


class TrafficLimiter:
    def __init__(self, redis_url: str) -> None:
        self._redis = redis_asyncio.Redis.from_url(redis_url, socket_connect_timeout=0.25, socket_timeout=0.25)
        self._skip_until = 0.0

    async def wait_seconds(self, service_id: str, limit: int, now: float | None = None) -> float:
        """0 when this call is within the limit; else the seconds until the next second begins."""
        now = time.time() if now is None else now
        if now < self._skip_until:
            return 0.0
        window = int(now)
        key = f"{KEY_PREFIX}{service_id}:{window}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 2)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            if self._skip_until == 0.0 or now - self._skip_until > 60:
                log.warning("traffic limits not enforced: Redis does not answer (%s)", exc)
            self._skip_until = now + REDIS_RETRY_SECONDS
            return 0.0
        return 0.0 if count <= limit else window + 1 - now

    async def close(self) -> None:
        await self._redis.aclose()
