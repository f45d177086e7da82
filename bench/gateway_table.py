"""The gateway's routing table at platform scale: push latency, idle CPU, reload stalls.

In one run it
  * creates a scratch database (default rts_bench_table; dropped first if it
    is left over), migrates it, and seeds 10,000 Running services (one
    healthy instance each) and 100,000 access tokens, with the routing
    triggers off for the seeding (no gateway listens yet);
  * starts a tiny HTTP model on a free 127.0.0.1 port (every instance points
    at it) and one gateway process (`python -m gateway --processes 1`) on the
    scratch database, with the default safety-net full reload period;
  * measures, from a committed change to the gateway acting on it (the bench
    polls a call in a tight loop): an instance turning healthy (503 -> 200)
    and unhealthy, a token revoked (200 -> 401) and restored;
  * times services.routing_sync.routing_sync (one live gateway);
  * reads the gateway's CPU from /proc/<pid>/stat over 10 idle seconds, and
    the CPU of one full reload (forced with NOTIFY rts_routing, '*');
  * during forced full reloads, times a cheap call (401, no credentials) in a
    tight loop from the bench, and reads the gateway's own longest event-loop
    stall (/healthz/table last_full_reload.max_stall_ms);
  * prints the figures against the targets, stops everything, drops the database.

Needs PostgreSQL only (no Docker).

    .venv/bin/python bench/gateway_table.py [--services 10000] [--tokens 100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_PUSH_MS = 100.0
TARGET_IDLE_CPU_PERCENT = 2.0
TARGET_STALL_MS = 2.0
BATCH = 5000


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- The scratch database ---------------------------------------------------------------


def admin_execute(sql: str) -> None:
    import psycopg

    from gateway.config import DatabaseConfig

    db = DatabaseConfig.from_env()
    with psycopg.connect(
        dbname="postgres", user=db.user, password=db.password or None, host=db.host, port=db.port, autocommit=True
    ) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def seed(services: int, tokens: int) -> dict[str, Any]:
    """Rows through the ORM (so new fields get their defaults), triggers off."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.utils import timezone

    from access.models import AccessToken
    from pools.models import Flavor, Node, ResourcePool
    from services.choices import InstanceState, ServiceStatus, VersionStatus
    from services.contract import secret_hash
    from services.models import AIApplication, AIApplicationVersion, Instance, Service, ServiceVersionConfig

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    users = User.objects.bulk_create([User(username=f"bench{i}", password="!") for i in range(100)])
    pool = ResourcePool.objects.create(name="bench", is_public=True)
    node = Node.objects.create(
        pool=pool, name="bench", docker_host=settings.DOCKER_HOST, cpu_count=64, memory_mib=1 << 20, is_reachable=True
    )
    flavor = Flavor.objects.create(code="bench", display_name="bench", cpus=1, memory_mib=256)
    application = AIApplication.objects.create(owner=users[0], name="bench")
    version = AIApplicationVersion.objects.create(
        application=application, version="1.0.0", image="bench", status=VersionStatus.NORMAL, predict_path="/"
    )
    port = int(os.environ["BENCH_MODEL_PORT"])
    for start in range(0, services, BATCH):
        with transaction.atomic():
            rows = Service.objects.bulk_create(
                [
                    Service(owner=users[i % len(users)], name=f"svc{i}", pool=pool, status=ServiceStatus.RUNNING)
                    for i in range(start, min(services, start + BATCH))
                ]
            )
            configs = ServiceVersionConfig.objects.bulk_create(
                [ServiceVersionConfig(service=s, app_version=version, flavor=flavor, weight=100) for s in rows]
            )
            Instance.objects.bulk_create(
                [
                    Instance(
                        service=s,
                        config=c,
                        index=0,
                        node=node,
                        container_name=f"bench-{s.id}",
                        host_port=port,
                        is_healthy=True,
                        state=InstanceState.RUNNING,
                    )
                    for s, c in zip(rows, configs, strict=True)
                ]
            )
    expires = timezone.now() + timedelta(days=30)
    for start in range(0, tokens, BATCH):
        AccessToken.objects.bulk_create(
            [
                AccessToken(
                    owner=users[i % len(users)],
                    name=f"t{i}",
                    token_hash=secret_hash(f"bench-token-{i}"),
                    prefix="bench",
                    expires_at=expires,
                )
                for i in range(start, min(tokens, start + BATCH))
            ]
        )
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = origin")
    target = Service.objects.filter(owner=users[0]).order_by("created_at").first()
    assert target is not None
    instance = Instance.objects.get(service=target)
    token = AccessToken.objects.get(token_hash=secret_hash("bench-token-0"))
    return {"service_id": str(target.id), "instance_id": instance.id, "token_id": token.id, "token": "bench-token-0"}


# --- The model and the gateway ------------------------------------------------------------


class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm
    # holds the body until the gateway's delayed ACK (~40 ms) and the bench
    # would measure that instead of the gateway.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_gateway(database: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_NAME": database}
    log = open(ROOT / "test-artifacts" / "bench-gateway-table.log", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--processes", "1", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class Client:
    """One keep-alive connection to the gateway."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            self.conn.request("GET", path, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            return 0, b""

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz/table")
        return json.loads(body) if status == 200 else {}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_until(change: Callable[[], None], check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Milliseconds from just before a committed change until `check` holds."""
    started = time.perf_counter()
    change()
    while not check():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"the gateway did not act on the change within {timeout:g} s")
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered):.1f} ms, max {ordered[-1]:.1f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database", default="rts_bench_table")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()

    model = ThreadingHTTPServer(("127.0.0.1", free_port()), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    os.environ["BENCH_MODEL_PORT"] = str(model.server_address[1])
    os.environ["DATABASE_NAME"] = args.database
    os.environ.setdefault("CONSOLE_ID", "bench-table")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)

    say(f"creating database {args.database}")
    admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{args.database}"')
    gateway: subprocess.Popen[bytes] | None = None
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        say(f"seeding {args.services} services and {args.tokens} tokens")
        started = time.perf_counter()
        seeded = seed(args.services, args.tokens)
        say(f"seeded in {time.perf_counter() - started:.1f} s")
        connection.close()

        port = free_port()
        gateway = start_gateway(args.database, port)
        client = Client(port)
        deadline = time.monotonic() + 60
        while client.health().get("full_reloads", 0) < 1:
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not load its table (see test-artifacts/bench-gateway-table.log)")
            time.sleep(0.05)
        first = client.health()["last_full_reload"]
        say(
            f"gateway up: {first['services']} services, {first['tokens']} tokens loaded in {first['seconds']:.3f} s "
            f"(longest stall {first['max_stall_ms']:.1f} ms)"
        )

        import psycopg

        from services.routing_sync import routing_sync

        db = connection.settings_dict
        change_conn = psycopg.connect(
            dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None, host=db["HOST"], port=db["PORT"]
        )
        change_conn.autocommit = True

        def execute(sql: str, *params: object) -> Callable[[], None]:
            return lambda: change_conn.execute(sql, params)  # type: ignore[arg-type]

        call_path = f"/v1/infers/{seeded['service_id']}"
        with_token = {"X-Auth-Token": seeded["token"]}

        def status_is(expected: int) -> Callable[[], bool]:
            return lambda: client.get(call_path, with_token)[0] == expected

        assert status_is(200)(), client.get(call_path, with_token)
        set_healthy = "UPDATE services_instance SET is_healthy = %s WHERE id = %s"
        set_revoked = "UPDATE access_accesstoken SET revoked_at = %s WHERE id = %s"
        healthy, unhealthy, revoked, restored, syncs = [], [], [], [], []
        for _ in range(args.repeat):
            unhealthy.append(time_until(execute(set_healthy, False, seeded["instance_id"]), status_is(503)))
            healthy.append(time_until(execute(set_healthy, True, seeded["instance_id"]), status_is(200)))
            revoked.append(time_until(execute(set_revoked, datetime.now(UTC), seeded["token_id"]), status_is(401)))
            restored.append(time_until(execute(set_revoked, None, seeded["token_id"]), status_is(200)))
            syncs.append(routing_sync(timeout=2.0).seconds * 1000)
        say("from a committed change to the gateway acting on it:")
        print(f"    instance turns healthy   (503 -> 200): {summary(healthy)}")
        print(f"    instance turns unhealthy (200 -> 503): {summary(unhealthy)}")
        print(f"    token revoked            (200 -> 401): {summary(revoked)}")
        print(f"    token restored           (401 -> 200): {summary(restored)}")
        print(f"    routing_sync, 1 live gateway: {summary(syncs)}")
        worst_push = max(healthy + unhealthy + revoked + restored)

        client.conn.close()
        time.sleep(1.0)
        say(f"idle CPU over {args.idle_seconds:g} s")
        reloads_before = client.health()["full_reloads"]
        client.conn.close()
        cpu_before, wall_before = cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_percent = (cpu_seconds(gateway.pid) - cpu_before) / (time.monotonic() - wall_before) * 100
        reloads_during = client.health()["full_reloads"] - reloads_before
        print(f"    {idle_percent:.2f} % of a core ({reloads_during} timed full reload(s) in the window)")

        say("full reloads (forced with NOTIFY rts_routing, '*') while the bench times a cheap call in a loop")
        probe = Client(port)
        baseline: list[float] = []
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            started = time.perf_counter()
            probe.get(call_path)
            baseline.append((time.perf_counter() - started) * 1000)
        reload_cpu, reload_seconds, stalls_inside, stalls_outside, busy_inside = [], [], [], [], []
        for _ in range(3):
            count = client.health()["full_reloads"]
            client.conn.close()
            cpu_before = cpu_seconds(gateway.pid)
            change_conn.execute("NOTIFY rts_routing, '*'")
            latencies: list[float] = []
            reloaded = False
            while not reloaded:
                for _ in range(50):
                    started = time.perf_counter()
                    probe.get(call_path)
                    latencies.append((time.perf_counter() - started) * 1000)
                health = client.health()
                client.conn.close()
                reloaded = health["full_reloads"] > count
            reload_cpu.append(cpu_seconds(gateway.pid) - cpu_before)
            reload_seconds.append(health["last_full_reload"]["seconds"])
            stalls_inside.append(health["last_full_reload"]["max_stall_ms"])
            busy_inside.append(health["last_full_reload"]["max_busy_ms"])
            stalls_outside.append(max(latencies))
        ordered = sorted(baseline)
        print(
            f"    a cheap call with no reload: p50 {statistics.median(ordered):.2f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)]:.2f} ms, max {ordered[-1]:.2f} ms"
        )
        print(
            f"    the same call during a full reload: max {max(stalls_outside):.2f} ms (per reload: "
            + ", ".join(f"{v:.2f}" for v in stalls_outside)
            + ")"
        )
        print(
            f"    longest event-loop stall the gateway saw in a reload: {max(stalls_inside):.2f} ms (per reload: "
            + ", ".join(f"{v:.2f}" for v in stalls_inside)
            + "; wall time: includes being preempted and the 1 ms timer)"
        )
        print(
            f"    of which the gateway's own CPU work (thread time in the gap): {max(busy_inside):.2f} ms (per reload: "
            + ", ".join(f"{v:.2f}" for v in busy_inside)
            + ")"
        )
        print(
            f"    full reload: {statistics.median(reload_seconds):.3f} s wall, "
            f"{statistics.median(reload_cpu):.3f} s CPU"
        )
        from django.conf import settings

        period = settings.GATEWAY_FULL_RELOAD_SECONDS
        amortised = statistics.median(reload_cpu) / period * 100
        print(f"    timed full reload every {period:g} s: {amortised:.2f} % of a core on average")
        change_conn.close()

        say("summary against the targets")
        print(f"    push latency, worst: {worst_push:.1f} ms (target <= {TARGET_PUSH_MS:g} ms)")
        print(
            f"    idle CPU: {idle_percent:.2f} % + {amortised:.2f} % for the timed full reload "
            f"(target well under {TARGET_IDLE_CPU_PERCENT:g} %)"
        )
        print(
            f"    longest stall in a full reload: {max(busy_inside):.2f} ms of own work, {max(stalls_inside):.2f} ms "
            f"wall inside, {max(stalls_outside):.2f} ms as a call saw it (target a millisecond or two)"
        )
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=10)
        from django.db import connections

        connections.close_all()
        admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        model.shutdown()
        say(f"dropped database {args.database}")


if __name__ == "__main__":
    main()
