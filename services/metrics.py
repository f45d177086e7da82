"""Metrics the workers record (Prometheus); console/metrics.py serves them.

Under `make run` the web and the workers share PROMETHEUS_MULTIPROC_DIR, so
the web's /metrics adds up what every process recorded.
"""

from __future__ import annotations

from prometheus_client import Histogram

DEPLOY_SECONDS = Histogram(
    "rts_deploy_seconds",
    "From a service turning Deploying to Running",
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
RECONCILE_SECONDS = Histogram(
    "rts_reconcile_seconds",
    "One cycle of the reconcile loop",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
