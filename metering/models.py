"""Usage as intervals of time, written by PostgreSQL triggers only.

The triggers of migration 0001 open an interval when something starts to
count (an instance of a public pool turns Running; a node joins a dedicated
pool) and close it when it stops counting, in the same statement as the row
change, so no writer of instances or nodes can forget to meter. Python code
only reads these tables (metering.selectors).

The columns are copies, not foreign keys: usage is billing history and
outlives the service, the instance and the node it describes.
"""

from django.db import models


class InstanceUsage(models.Model):
    """One stretch of time an instance of a public pool was Running, with its
    specification as it was then. `ended_at` is NULL while it runs."""

    instance_id = models.BigIntegerField()
    service_id = models.UUIDField()
    service_name = models.CharField(max_length=64)
    owner_id = models.IntegerField()
    pool_id = models.BigIntegerField()
    pool_name = models.CharField(max_length=64)
    flavor_code = models.CharField(max_length=64)
    cpus = models.DecimalField(max_digits=5, decimal_places=2)
    memory_mib = models.PositiveIntegerField()
    gpus = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [
            # The triggers' ON CONFLICT names this index: at most one open interval per instance.
            models.UniqueConstraint(
                fields=["instance_id"], condition=models.Q(ended_at__isnull=True), name="instance_usage_one_open"
            ),
            models.CheckConstraint(
                condition=models.Q(ended_at__isnull=True) | models.Q(ended_at__gte=models.F("started_at")),
                name="instance_usage_ends_after_start",
            ),
        ]
        indexes = [
            models.Index(fields=["owner_id", "ended_at"], name="instance_usage_owner_ended"),
            models.Index(fields=["ended_at"], name="instance_usage_ended"),
        ]

    def __str__(self) -> str:
        return f"{self.service_name} instance {self.instance_id} from {self.started_at:%Y-%m-%d %H:%M:%S}"


class NodeUsage(models.Model):
    """One stretch of time a node belonged to a dedicated pool, billed to the
    pool's owner then. `ended_at` is NULL while it does."""

    node_id = models.BigIntegerField()
    node_name = models.CharField(max_length=64)
    pool_id = models.BigIntegerField()
    pool_name = models.CharField(max_length=64)
    owner_id = models.IntegerField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["node_id"], condition=models.Q(ended_at__isnull=True), name="node_usage_one_open"
            ),
            models.CheckConstraint(
                condition=models.Q(ended_at__isnull=True) | models.Q(ended_at__gte=models.F("started_at")),
                name="node_usage_ends_after_start",
            ),
        ]
        indexes = [
            models.Index(fields=["owner_id", "ended_at"], name="node_usage_owner_ended"),
            models.Index(fields=["ended_at"], name="node_usage_ended"),
        ]

    def __str__(self) -> str:
        return f"{self.pool_name} node {self.node_name} from {self.started_at:%Y-%m-%d %H:%M:%S}"
