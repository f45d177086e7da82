"""The service list at scale: server time of the list page and of its poll.

Seeds one user with N services (default 1,000; a quarter of them Deploying, so
the list polls) in the console's database, renders the page and the poll
fragment through Django's test client a number of times, prints the medians,
the response sizes and the query counts; then the same for the operators' list
(a staff user, ?scope=all) over N services spread across U users (default 50);
and removes what it seeded.

    .venv/bin/python bench/service_list.py [--services 1000] [--users 50] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from pools.models import Flavor, Node, ResourcePool  # noqa: E402
from services.choices import InstanceState, ServiceStatus, VersionStatus  # noqa: E402
from services.models import AIApplication, AIApplicationVersion, Instance, Service, ServiceVersionConfig  # noqa: E402


def seed(count: int, users: int = 1):
    """`count` services spread round-robin over `users` new users, all on one
    pool; returns (the users, the pool)."""
    tag = uuid.uuid4().hex[:8]
    owners = [
        get_user_model().objects.create_user(username=f"bench-list-{tag}-{n}", password=uuid.uuid4().hex)
        for n in range(users)
    ]
    pool = ResourcePool.objects.create(name=f"bench-list-{tag}", is_public=False, owner=owners[0])
    node = Node.objects.create(
        pool=pool,
        name=f"bench-list-node-{tag}",
        docker_host="unix:///nonexistent.sock",
        cpu_count=2,
        memory_mib=4096,
        is_enabled=False,
    )
    flavor = Flavor.objects.order_by("id").first() or Flavor.objects.create(
        code="bench-list", display_name="bench-list", cpus=1, memory_mib=512
    )
    versions = []
    for owner in owners:
        app = AIApplication.objects.create(owner=owner, name="bench-app")
        versions.append(
            AIApplicationVersion.objects.create(
                application=app, version="1.0.0", image="x:1", status=VersionStatus.NORMAL
            )
        )
    statuses = [ServiceStatus.DEPLOYING if n % 4 == 0 else ServiceStatus.RUNNING for n in range(count)]
    services = Service.objects.bulk_create(
        Service(owner=owners[n % users], name=f"svc-{n:05d}", pool=pool, status=status)
        for n, status in enumerate(statuses)
    )
    configs = ServiceVersionConfig.objects.bulk_create(
        ServiceVersionConfig(service=service, app_version=versions[n % users], flavor=flavor)
        for n, service in enumerate(services)
    )
    Instance.objects.bulk_create(
        Instance(
            service=s,
            config=c,
            index=0,
            node=node,
            container_name=f"bench-{s.id}",
            state=InstanceState.RUNNING,
            is_healthy=True,
        )
        for s, c in zip(services, configs, strict=True)
    )
    return owners, pool


def unseed(owners, pool) -> None:
    Service.objects.filter(owner__in=owners).delete()
    Node.objects.filter(pool=pool).delete()
    pool.delete()
    for owner in owners:
        owner.delete()


def timed(client: Client, path: str, data: dict, rounds: int, **headers: str) -> tuple[float, int, int]:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path, data, **headers)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path, data, **headers)
    return statistics.median(seconds), len(response.content), len(queries)


def first_page_ids(owners, **filters) -> list[str]:
    """The rows of the first page (10, newest first): the most a poll watches at the default size."""
    services = Service.objects.filter(owner__in=owners, **filters).order_by("-created_at", "-id")[:10]
    return [str(service_id) for service_id in services.values_list("id", flat=True)]


def report(client: Client, cases, services: int, rounds: int) -> None:
    for label, path, data, headers in cases:
        median, size, queries = timed(client, path, data, rounds, **headers)
        print(
            f"{label:34s} {services} services: median {median * 1000:6.1f} ms, {size / 1024:6.1f} KiB, {queries} queries"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]

    owners, pool = seed(args.services)
    try:
        client = Client()
        client.force_login(owners[0])
        # The poll as the page sends it, watching every row on screen (the worst case).
        watch = {"watch": first_page_ids(owners)}
        cases = (
            ("list page", "/", {}, {}),
            ("poll, 10 rows watched", "/", watch, {"HTTP_HX_REQUEST": "true"}),
            ("list page, 50 a page", "/", {"size": 50}, {}),
        )
        report(client, cases, args.services, args.rounds)
    finally:
        unseed(owners, pool)

    owners, pool = seed(args.services, users=args.users)
    operator = get_user_model().objects.create_user(
        username=f"bench-operator-{uuid.uuid4().hex[:8]}", password=uuid.uuid4().hex, is_staff=True
    )
    try:
        client = Client()
        client.force_login(operator)
        watch = {"scope": "all", "watch": first_page_ids(owners)}
        cases = (
            (f"operators' list ({args.users} users)", "/", {"scope": "all"}, {}),
            (f"operators' poll ({args.users} users)", "/", watch, {"HTTP_HX_REQUEST": "true"}),
        )
        report(client, cases, args.services, args.rounds)
    finally:
        unseed(owners, pool)
        operator.delete()
        Flavor.objects.filter(code="bench-list").delete()


if __name__ == "__main__":
    main()
