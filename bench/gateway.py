"""Gateway overhead: wrk against a model container straight, through nginx, and through our gateway.

The model is rts-fast-model:1.0.0 (examples/fast-model): nginx answering every
call with a fixed JSON body, as fast as nginx proxies, so what is measured is
the gateway's own cost. `--image rts-demo-model:1.0.0` measures the demo model
instead, whose one Python process is itself the limit at 32 connections.

In one run it
  * sets up a Running 1-instance service of the image (a throw-away user,
    token and AI application, deployed inline through services.actions, with
    the console's container limits; no Celery worker needed), on the database
    of console.settings;
  * starts nginx (Debian's package) as a plain reverse proxy with upstream
    keep-alive, on a free 127.0.0.1 port, with its own temporary prefix;
  * starts our gateway (`python -m gateway`, one process per core) on a free
    port, unless --gateway-url names one already running on the same database;
  * runs wrk with the same POST body (a Lua script) at 32 connections (2
    threads) and at 1 connection against each path: the container's /predict,
    nginx's /predict, the gateway's /v1/infers/<service_id>, and that again
    with the service's data collection on (100 % of calls, request and
    response: "collect"; switched off again for the plain gateway runs, each
    switch applied by every gateway process first) unless --no-collection;
  * does so in --rounds rounds (3), one path after the other in each, so that
    what else the machine runs meanwhile weighs on every path alike;
  * reads with each run, from /proc, the CPU time per call of the proxy on the
    path (every nginx or gateway process) and of PostgreSQL (every backend):
    the cost of the thing itself, whatever else the machine does meanwhile;
  * prints each run, then the medians over the rounds of requests/s and p50/p99
    latency of each path, the gateway's throughput as a ratio of nginx's at 32
    connections and the p50 it adds over the direct path at 1 connection
    (medians of the rounds' ratios and differences), against the targets
    (>= 0.31; <= 0.35 ms), and the gateway's throughput with collection at
    100 % as a ratio of it without (>= 0.9), with the records stored and dropped;
  * stops nginx and the gateway it started and deletes the service, its
    container and everything else it created.

Needs PostgreSQL and Docker (scripts/bootstrap.sh services docker images); installs
wrk and nginx and builds rts-fast-model:1.0.0 with `scripts/bootstrap.sh bench-tools`
when they are missing.
With another DATABASE_NAME than the console's, set CONSOLE_ID too, or a running
console's reconcile loop takes the benchmark's container for an orphan.

    .venv/bin/python bench/gateway.py [--duration 5] [--rounds 3] [--image rts-demo-model:1.0.0]
        [--gateway-url http://127.0.0.1:8001] [--no-collection] [--json FILE] [--check]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

IMAGE = "rts-fast-model:1.0.0"
BODY = '{"data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}'
# The targets of issue 12, against the fast model.
TARGET_RATIO_32 = 0.31
TARGET_ADDED_P50_MS = 0.35
TARGET_COLLECT_RATIO_32 = 0.9

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = %(token)s

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK-RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
"""

NGINX_CONF = """
worker_processes %(workers)d;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(prefix)s/client_body;
    proxy_temp_path %(prefix)s/proxy;
    fastcgi_temp_path %(prefix)s/fastcgi;
    uwsgi_temp_path %(prefix)s/uwsgi;
    scgi_temp_path %(prefix)s/scgi;
    upstream model {
        server 127.0.0.1:%(upstream_port)d;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def die(message: str) -> None:
    print(f"bench/gateway.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            die(f"{what} within {timeout:g} s")
        time.sleep(0.05)


def http_status(port: int, path: str, method: str = "GET", body: str | None = None, headers=None) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# --- tools ---------------------------------------------------------------------------


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def ensure_tools(image: str) -> tuple[str, str]:
    if shutil.which("wrk") is None or find_nginx() is None or (image == IMAGE and not image_present(image)):
        say(f"installing wrk and nginx and building {IMAGE} (scripts/bootstrap.sh bench-tools)")
        if subprocess.run([str(ROOT / "scripts" / "bootstrap.sh"), "bench-tools"]).returncode != 0:
            die("could not install wrk and nginx; on Debian: sudo apt-get install -y wrk nginx")
    wrk, nginx = shutil.which("wrk"), find_nginx()
    if wrk is None or nginx is None:
        die("wrk or nginx is still missing; on Debian: sudo apt-get install -y wrk nginx")
    return wrk, nginx


def find_nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


# --- the service under test -------------------------------------------------------------


@dataclass
class Fixture:
    service_id: str
    container_port: int
    token: str


class ServiceFixture:
    """A throw-away user, token, AI application and 1-instance Running service."""

    def __init__(self, image: str) -> None:
        import django

        django.setup()
        self.image = image
        self.created: list = []

    def migrate_if_needed(self) -> None:
        from django.core.management import call_command
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        try:
            executor = MigrationExecutor(connection)
        except Exception as exc:  # noqa: BLE001 - any connection error reads the same here
            die(f"cannot reach the database ({exc}); run scripts/bootstrap.sh services")
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            say("migrating the database")
            call_command("migrate", interactive=False, verbosity=0)

    def collected_records_vacuum(self) -> None:
        """Start every run from a records table without the dead rows of earlier
        runs (each tears its service down; where autovacuum is off, as on the
        test machine's PostgreSQL, they would stay and weigh on every insert)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) services_datacollectionrecord")

    def set_up(self) -> Fixture:
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from access.actions import access_token_create
        from pools.models import Flavor, Node, ResourcePool
        from services import actions, lifecycle, runtime, tasks
        from services.choices import VersionStatus
        from services.models import AIApplication, AIApplicationVersion, Instance
        from services.reconcile import nodes_refresh
        from services.validation import DeployRequest, VersionConfigRequest

        self.migrate_if_needed()
        self.collected_records_vacuum()
        try:
            if not runtime.image_exists(settings.DOCKER_HOST, self.image):
                die(f"image {self.image} is missing; run scripts/bootstrap.sh images")
        except runtime.EngineError as exc:
            die(f"{exc}; run scripts/bootstrap.sh docker")
        # Deploy inline: nothing is queued for a worker that may not be running.
        for task in (tasks.service_deploy_task, tasks.service_stop_task, tasks.service_delete_task):
            task.delay = lambda *args: None

        suffix = uuid.uuid4().hex[:8]
        user = get_user_model().objects.create_user(username=f"bench-{suffix}", password=uuid.uuid4().hex)
        self.created.append(user)
        # Reuse the engine's node when the console knows it: a second Node on the
        # same engine would make the reconcile loop take its containers for orphans.
        node = Node.objects.filter(docker_host=settings.DOCKER_HOST, is_enabled=True).select_related("pool").first()
        if node is None:
            pool = ResourcePool.objects.create(name=f"bench-{suffix}", is_public=False, owner=user)
            node = Node.objects.create(pool=pool, name=f"bench-{suffix}", docker_host=settings.DOCKER_HOST)
            self.created[:0] = [pool, node]
        nodes_refresh()
        flavor = Flavor.objects.filter(gpus=0, cpus__gte=1, memory_mib__gte=256).order_by("cpus", "memory_mib").first()
        if flavor is None:
            flavor = Flavor.objects.create(code=f"bench.{suffix}", display_name="bench", cpus=1, memory_mib=512)
            self.created.insert(0, flavor)
        application = AIApplication.objects.create(owner=user, name=f"bench-{suffix}")
        version = AIApplicationVersion.objects.create(
            application=application, version="1.0.0", image=self.image, status=VersionStatus.NORMAL
        )
        request = DeployRequest(
            name=f"bench-{suffix}",
            description="bench/gateway.py",
            pool=node.pool,
            timeout_minutes=3,
            is_websocket=False,
            configs=[VersionConfigRequest(app_version=version, flavor=flavor, instance_count=1, weight=100, envs={})],
        )
        service = actions.service_create(owner=user, request=request)
        self.service_id = service.id
        say(f"deploying service {service.id} (1 instance of {self.image}, {flavor.code})")
        outcome = lifecycle.service_deploy_run(service_id=service.id)
        if outcome != "running":
            service.refresh_from_db()
            die(f"the deploy ended {outcome}: {service.status_reason}")
        instance = Instance.objects.get(service_id=service.id)
        token = access_token_create(owner=user, name="bench", days=1).secret
        return Fixture(str(service.id), instance.host_port, token)

    def collection_set(self, *, is_enabled: bool) -> None:
        """Keep every call of the service, request and response, or none (as the
        Data Collection tab would); returns once every gateway process applies it."""
        from services.actions import collection_rule_set
        from services.models import Service
        from services.routing_sync import routing_sync
        from services.validation import parse_collection_rule

        service = Service.objects.get(id=self.service_id)
        data = {"is_enabled": is_enabled, "sample_percent": 100, "content": "both", "keep_records": 100_000}
        collection_rule_set(service=service, request=parse_collection_rule(service=service, data=data))
        if not routing_sync(timeout=10).is_complete:
            die("a gateway process did not apply the data collection rule within 10 s")

    def records_with(self, request_id: str) -> bool:
        from services.models import DataCollectionRecord

        return DataCollectionRecord.objects.filter(service_id=self.service_id, request_id=request_id).exists()

    def record_count(self) -> int:
        from services.models import DataCollectionRecord

        return DataCollectionRecord.objects.filter(service_id=self.service_id).count()

    def tear_down(self) -> None:
        from services import actions, lifecycle
        from services.models import Service

        service_id = getattr(self, "service_id", None)
        if service_id is not None and Service.objects.filter(id=service_id).exists():
            service = Service.objects.get(id=service_id)
            try:
                actions.service_delete(service=service)
            except actions.ActionRefused:
                pass
            lifecycle.service_delete_run(service_id=service_id)
        self._delete_created()

    def _delete_created(self) -> None:
        from django.contrib.auth import get_user_model

        from pools.models import Flavor, Node, ResourcePool
        from services.models import AIApplication

        # In the order the PROTECT foreign keys allow; the user last, with its
        # applications and tokens.
        user_model = get_user_model()
        for obj in self.created:
            if isinstance(obj, user_model):
                AIApplication.objects.filter(owner=obj).delete()
        for model in (Node, ResourcePool, Flavor, user_model):
            for obj in self.created:
                if isinstance(obj, model):
                    model.objects.filter(pk=obj.pk).delete()


# --- nginx and the gateway ------------------------------------------------------------------


def start_nginx(stack: ExitStack, nginx: str, upstream_port: int) -> tuple[int, int]:
    prefix = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nginx-")))
    prefix.chmod(0o755)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF % {"workers": os.cpu_count() or 1, "prefix": prefix, "upstream_port": upstream_port, "port": port}
    )
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    stack.callback(stop_process, process, "nginx")

    def answers() -> bool:
        if process.poll() is not None:
            die(f"nginx exited with code {process.returncode}: {(prefix / 'error.log').read_text()[-500:]}")
        return http_status(port, "/health") == 200

    wait_until("nginx did not answer", answers, 10)
    say(f"nginx {nginx_version(nginx)} proxying 127.0.0.1:{port} -> 127.0.0.1:{upstream_port} (keepalive 64)")
    return port, process.pid


def nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\S+)", out)
    return match.group(1) if match else "?"


def start_gateway(stack: ExitStack, processes: int) -> tuple[int, int]:
    port = free_port()
    log = stack.enter_context(tempfile.NamedTemporaryFile(prefix="bench-gateway-", suffix=".log"))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--processes", str(processes)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(stop_process, process, "gateway")

    def answers() -> bool:
        if process.poll() is not None:
            die(f"the gateway exited with code {process.returncode}: {Path(log.name).read_text()[-800:]}")
        return http_status(port, "/healthz") == 200

    wait_until("the gateway did not answer /healthz", answers, 20)
    say(f"gateway on 127.0.0.1:{port} ({processes} processes)")
    return port, process.pid


def stop_process(process: subprocess.Popen, name: str) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    say(f"stopped {name}")


# --- wrk -----------------------------------------------------------------------------------


@dataclass
class Result:
    path: str
    connections: int
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time per request, in µs, of the proxy on the path (nginx or the
    # gateway, all its processes) and of PostgreSQL (every backend); None: not measured.
    proxy_cpu_us: float | None = None
    database_cpu_us: float | None = None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(child) for child in children)
    return pids


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process still there."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process that appeared counts from 0."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def run_wrk(wrk: str, script: Path, url: str, connections: int, duration: float) -> dict:
    threads = min(2, connections)
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    match = re.search(r"WRK-RESULT (\{.*\})", out.stdout)
    if out.returncode != 0 or match is None:
        die(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    return json.loads(match.group(1))


def measure(
    wrk: str,
    script: Path,
    path: str,
    url: str,
    connections: int,
    duration: float,
    round_: int,
    proxy_pid: int | None = None,
) -> Result:
    proxy_before = cpu_seconds(process_tree(proxy_pid)) if proxy_pid else {}
    database_before = cpu_seconds(postgres_pids())
    raw = run_wrk(wrk, script, url, connections, duration)
    database_after = cpu_seconds(postgres_pids())
    proxy_after = cpu_seconds(process_tree(proxy_pid)) if proxy_pid else {}
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    requests = max(raw["requests"], 1)
    result = Result(
        path=path,
        connections=connections,
        round=round_,
        requests_per_second=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=errors,
        proxy_cpu_us=cpu_used(proxy_before, proxy_after) / requests * 1e6 if proxy_pid else None,
        database_cpu_us=cpu_used(database_before, database_after) / requests * 1e6,
    )
    proxy_cpu = f"  proxy CPU {result.proxy_cpu_us:>6.1f} µs/call" if result.proxy_cpu_us is not None else ""
    print(
        f"    round {round_}  {path:<8} {connections:>3} conn  {result.requests_per_second:>9.0f} req/s"
        f"  p50 {result.p50_ms:>7.3f} ms  p99 {result.p99_ms:>7.3f} ms  errors {errors}{proxy_cpu}"
        f"  PostgreSQL CPU {result.database_cpu_us:>5.1f} µs/call",
        flush=True,
    )
    return result


def collection_dropped(gateway_port: int) -> float:
    """rts_gateway_collection_dropped_total, over every gateway process."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("rts_gateway_collection_dropped_total")
    )


class Collection:
    """Data collection of the service, switched on for the "collect" runs and off
    for the "gateway" runs, with the records stored and dropped while it was on."""

    def __init__(self, fixture_maker: ServiceFixture, gateway_port: int, gateway_path: str, headers: dict) -> None:
        self.fixture_maker = fixture_maker
        self.gateway_port = gateway_port
        self.gateway_path = gateway_path
        self.headers = headers
        self.is_on = False
        self.baseline: tuple[int, float] | None = None

    def switch(self, *, on: bool) -> None:
        if on == self.is_on:
            return
        self.fixture_maker.collection_set(is_enabled=on)
        self.is_on = on
        if on and self.baseline is None:
            self._check_collecting()
            say("data collection on for the collect runs: 100 % of calls, request and response")
            self.baseline = (self.fixture_maker.record_count(), collection_dropped(self.gateway_port))

    def _check_collecting(self) -> None:
        probe_id = f"bench-probe-{uuid.uuid4().hex}"

        def collecting() -> bool:
            # A call the gateway kept has reached the table (flushed once a second).
            http_status(self.gateway_port, self.gateway_path, "POST", BODY, {**self.headers, "X-Request-Id": probe_id})
            return self.fixture_maker.records_with(probe_id)

        wait_until("the gateway did not start collecting", collecting, 15)

    def counts(self) -> tuple[int, float]:
        """(records stored, records the gateway dropped) since collection first went on."""
        if self.baseline is None:
            return 0, 0.0
        time.sleep(2.5)  # the last flush
        stored, dropped = self.baseline
        return self.fixture_maker.record_count() - stored, collection_dropped(self.gateway_port) - dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all paths, for medians (default 3)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per path, first round (default 2)")
    parser.add_argument("--image", default=IMAGE, help=f"the model image (default {IMAGE})")
    parser.add_argument("--gateway-url", help="use this running gateway (same database) instead of starting one")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="gateway processes (default: cores)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--no-collection", action="store_true", help="skip the runs with data collection at 100 %%")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.rounds < 1:
        die("--rounds must be at least 1")

    wrk, nginx = ensure_tools(args.image)
    fixture_maker = ServiceFixture(args.image)
    with ExitStack() as stack:
        stack.callback(say, "cleaned up")
        stack.callback(fixture_maker.tear_down)
        fixture = fixture_maker.set_up()
        nginx_port, nginx_pid = start_nginx(stack, nginx, fixture.container_port)
        gateway_pid: int | None = None
        if args.gateway_url:
            gateway_base = args.gateway_url.rstrip("/")
            say(f"using the running gateway at {gateway_base} (its CPU is not measured)")
        else:
            started_port, gateway_pid = start_gateway(stack, args.processes)
            gateway_base = f"http://127.0.0.1:{started_port}"
        gateway_port = int(gateway_base.rsplit(":", 1)[1])
        gateway_path = f"/v1/infers/{fixture.service_id}"
        headers = {"Content-Type": "application/json", "X-Auth-Token": fixture.token}
        wait_until(
            "the gateway did not route to the new service",
            lambda: http_status(gateway_port, gateway_path, "POST", BODY, headers) == 200,
            10,
        )

        script = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-wrk-"))) / "post.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(BODY), "token": json.dumps(fixture.token)})
        targets = [
            ("direct", f"http://127.0.0.1:{fixture.container_port}/predict"),
            ("nginx", f"http://127.0.0.1:{nginx_port}/predict"),
            ("gateway", f"{gateway_base}{gateway_path}"),
        ]
        if not args.no_collection:
            targets.append(("collect", f"{gateway_base}{gateway_path}"))
        proxy_pids = {"nginx": nginx_pid, "gateway": gateway_pid, "collect": gateway_pid}
        collection = Collection(fixture_maker, gateway_port, gateway_path, headers)
        say(
            f"wrk: POST {len(BODY)}-byte JSON, {args.rounds} rounds of {args.duration:g} s per path,"
            f" {os.cpu_count()} cores"
        )
        # Round after round over every path, so that whatever else the machine
        # runs meanwhile weighs on each path alike; the figures are medians.
        results: list[Result] = []
        for round_ in range(1, args.rounds + 1):
            for connections in (32, 1):
                for name, url in targets:
                    if name in ("gateway", "collect"):
                        collection.switch(on=name == "collect")
                    if round_ == 1 and args.warmup:
                        run_wrk(wrk, script, url, connections, args.warmup)
                    results.append(
                        measure(wrk, script, name, url, connections, args.duration, round_, proxy_pids.get(name))
                    )
                    if name == "collect":
                        time.sleep(1.2)  # its last records are flushed before the next run
        collected, dropped = collection.counts()

    by = {(r.round, r.path, r.connections): r for r in results}
    rounds = range(1, args.rounds + 1)

    def median_over_rounds(value) -> float:
        return statistics.median(value(round_) for round_ in rounds)

    ratio = median_over_rounds(
        lambda n: by[(n, "gateway", 32)].requests_per_second / by[(n, "nginx", 32)].requests_per_second
    )
    added = median_over_rounds(lambda n: by[(n, "gateway", 1)].p50_ms - by[(n, "direct", 1)].p50_ms)
    ratio_ok = ratio >= TARGET_RATIO_32
    added_ok = added <= TARGET_ADDED_P50_MS
    collect_ratio = None
    if not args.no_collection:
        collect_ratio = median_over_rounds(
            lambda n: by[(n, "collect", 32)].requests_per_second / by[(n, "gateway", 32)].requests_per_second
        )
    collect_ok = collect_ratio is None or collect_ratio >= TARGET_COLLECT_RATIO_32
    print()
    print(f"medians of {args.rounds} rounds ({args.image}):")
    print(
        f"{'path':<8} {'conn':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" {'proxy CPU µs/call':>18} {'PostgreSQL CPU µs/call':>23}"
    )
    for connections in (32, 1):
        for name, _ in targets:
            runs = [by[(n, name, connections)] for n in rounds]
            rps = statistics.median(r.requests_per_second for r in runs)
            p50 = statistics.median(r.p50_ms for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            proxy_values = [r.proxy_cpu_us for r in runs if r.proxy_cpu_us is not None]
            proxy = f"{statistics.median(proxy_values):.1f}" if proxy_values else "-"
            database = statistics.median(r.database_cpu_us or 0.0 for r in runs)
            print(
                f"{name:<8} {connections:>4} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {sum(r.errors for r in runs):>6}"
                f" {proxy:>18} {database:>23.1f}"
            )
    print()
    verdict = {True: "met", False: "MISSED"}
    print(f"gateway / nginx throughput at 32 connections: {ratio:.3f}", end="  ")
    print(f"(target >= {TARGET_RATIO_32}: {verdict[ratio_ok]})")
    print(f"gateway p50 added over direct at 1 connection: {added:.3f} ms", end="  ")
    print(f"(target <= {TARGET_ADDED_P50_MS} ms: {verdict[added_ok]})")
    if collect_ratio is not None:
        print(f"gateway with collection at 100 % / without, at 32 connections: {collect_ratio:.3f}", end="  ")
        print(f"(target >= {TARGET_COLLECT_RATIO_32}: {verdict[collect_ok]})")
        print(f"records stored during the collection runs: {collected}; dropped by the gateway: {dropped:g}")
    if args.json:
        summary = {
            "image": args.image,
            "results": [r.__dict__ for r in results],
            "ratio_32": ratio,
            "added_p50_ms_1": added,
        }
        if collect_ratio is not None:
            summary.update(collect_ratio_32=collect_ratio, records_stored=collected, records_dropped=dropped)
        args.json.write_text(json.dumps(summary, indent=2))
    if any(r.errors for r in results):
        print("warning: some calls failed (see the errors column)")
    if args.check and not (ratio_ok and added_ok and collect_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
