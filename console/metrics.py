"""The console's /metrics for Prometheus: services by status, engines, queues,
and the deploy and reconcile durations the workers record."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import redis
from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pools.models import Node
from services.choices import ServiceStatus
from services.models import Instance, Service

QUEUES = ("lifecycle", "reconcile")


class ConsoleCollector(Collector):
    """Read at scrape time from PostgreSQL and the broker: a few cheap queries."""

    def collect(self) -> Iterator[Metric]:
        by_status = dict(Service.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        services = GaugeMetricFamily("rts_services", "Services by status", labels=["status"])
        for status in ServiceStatus:
            services.add_metric([status.value], by_status.get(status.value, 0))
        yield services

        instances = GaugeMetricFamily("rts_instances", "Instances by health", labels=["healthy"])
        by_health = dict(
            Instance.objects.values_list("is_healthy").annotate(n=Count("id")).values_list("is_healthy", "n")
        )
        instances.add_metric(["true"], by_health.get(True, 0))
        instances.add_metric(["false"], by_health.get(False, 0))
        yield instances

        waiting = Service.objects.filter(status=ServiceStatus.DEPLOYING, health_wait_started_at__isnull=False).count()
        yield GaugeMetricFamily("rts_deploys_waiting_for_health", "Deploys the prober is waiting on", value=waiting)

        reachable = GaugeMetricFamily(
            "rts_engine_reachable", "1 when the engine answered its last check", labels=["pool", "node"]
        )
        for pool, node, is_reachable in Node.objects.filter(is_enabled=True).values_list(
            "pool__name", "name", "is_reachable"
        ):
            reachable.add_metric([pool, node], 1 if is_reachable else 0)
        yield reachable

        depth = GaugeMetricFamily("rts_queue_depth", "Tasks waiting in the broker", labels=["queue"])
        try:
            broker = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=1)
            for queue in QUEUES:
                depth.add_metric([queue], broker.llen(queue))
        except redis.RedisError:
            pass  # the broker is down: no depth rather than a failed scrape
        yield depth


def metrics(request: HttpRequest) -> HttpResponse:
    """For a scraper on the console's own machine."""
    if not _is_local(request):
        return HttpResponse(status=404)
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        # One process (tests, a plain runserver): what this process recorded.
        registry.register(REGISTRY)
    registry.register(ConsoleCollector())
    return HttpResponse(generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")


def _is_local(request: HttpRequest) -> bool:
    """From this machine and through no proxy (a proxy here could be public)."""
    if "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META:
        return False
    try:
        return ipaddress.ip_address(str(request.META.get("REMOTE_ADDR", ""))).is_loopback
    except ValueError:
        return False
