"""The gateway's settings: one typed object, read from the environment once.

The console's settings module builds its GATEWAY_* values from the same object,
so both sides read the same variables with the same defaults. The gateway
itself never imports the console's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.env import env_float, env_int, env_str


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    user: str
    password: str
    host: str
    port: int

    @classmethod
    def from_env(cls) -> DatabaseConfig:
        return cls(
            name=env_str("DATABASE_NAME", "console"),
            user=env_str("DATABASE_USER", "postgres"),
            password=env_str("DATABASE_PASSWORD", ""),
            host=env_str("DATABASE_HOST", "127.0.0.1"),
            port=env_int("DATABASE_PORT", 5432),
        )


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    # Gateway processes sharing the port; 0 means one per core.
    processes: int
    call_timeout_seconds: float
    # When every instance of a service refuses the connection (an engine
    # restarting and reprogramming its port forwarding, an instance being
    # replaced), the call waits and tries again for up to this long: it has
    # reached no model, so trying again is safe for any method.
    connect_retry_seconds: float
    max_body_bytes: int
    # All of a request's header lines together; more is a 431.
    max_header_bytes: int
    # Changes reach the routing table as they are committed (LISTEN/NOTIFY);
    # this timed full reload is only a safety net.
    full_reload_seconds: float
    # Where the engines publish the instances' ports.
    instance_host: str
    # Redis, where the gateway processes count calls against traffic limits.
    redis_url: str
    database: DatabaseConfig

    @classmethod
    def from_env(cls) -> GatewayConfig:
        return cls(
            host=env_str("GATEWAY_HOST", "127.0.0.1"),
            port=env_int("GATEWAY_PORT", 8001),
            processes=env_int("GATEWAY_PROCESSES", 0),
            call_timeout_seconds=env_float("GATEWAY_CALL_TIMEOUT_SECONDS", 60.0),
            connect_retry_seconds=env_float("GATEWAY_CONNECT_RETRY_SECONDS", 1.0),
            max_body_bytes=env_int("GATEWAY_MAX_BODY_BYTES", 12 * 1024 * 1024),
            max_header_bytes=env_int("GATEWAY_MAX_HEADER_BYTES", 32 * 1024),
            full_reload_seconds=env_float("GATEWAY_FULL_RELOAD_SECONDS", 300.0),
            instance_host=env_str("INSTANCE_HOST", "127.0.0.1"),
            redis_url=env_str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            database=DatabaseConfig.from_env(),
        )

    @property
    def local_url(self) -> str:
        return f"http://{self.host}:{self.port}"
