from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.utils import timezone

from services.choices import (
    CALLABLE_STATUSES,
    SUPERVISED_STATUSES,
    TRANSITIONAL_STATUSES,
    UPDATABLE_STATUSES,
    ConfigPhase,
    InstanceState,
    ServiceStatus,
    VersionStatus,
    can_transition,
)
from services.contract import LATENCY_BUCKET_COUNT


class AIApplication(models.Model):
    """A model server a user registered; deployable through its versions."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_applications")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="ai_application_unique_name_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name


class AIApplicationVersion(models.Model):
    class Source(models.TextChoices):
        CONTAINER_IMAGE = "container_image", "Container image"

    application = models.ForeignKey(AIApplication, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=32)
    source = models.CharField(max_length=32, choices=Source.choices, default=Source.CONTAINER_IMAGE)
    image = models.CharField(max_length=255)
    container_port = models.PositiveIntegerField(default=8080)
    health_path = models.CharField(max_length=200, default="/health")
    predict_path = models.CharField(max_length=200, default="/predict")
    is_websocket = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.CHECKING)
    status_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["application__name", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["application", "version"], name="ai_version_unique_per_application"),
            models.CheckConstraint(
                condition=models.Q(container_port__gte=1, container_port__lte=65535), name="ai_version_port_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.application.name} {self.version}"


class Service(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="services")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=100, blank=True)
    pool = models.ForeignKey("pools.ResourcePool", on_delete=models.PROTECT, related_name="services")
    # Multi-pool load balancing: a second dedicated pool of the same node
    # specification; instances are split evenly between the two (even indexes
    # in `pool`, odd ones here), and so are the calls.
    second_pool = models.ForeignKey(
        "pools.ResourcePool", null=True, blank=True, on_delete=models.PROTECT, related_name="second_services"
    )
    status = models.CharField(max_length=16, choices=ServiceStatus.choices, default=ServiceStatus.DEPLOYING)
    status_reason = models.CharField(max_length=500, blank=True)
    timeout_minutes = models.PositiveIntegerField(default=20)
    is_websocket = models.BooleanField(default=False)
    # At most this many calls per second, over every gateway process together;
    # the calls beyond it get 429. None: no limit.
    traffic_limit = models.PositiveIntegerField(null=True, blank=True)
    # Auto stop: a Running service stops by itself at auto_stop_at (set from
    # auto_stop_hours when it turns Running; None: it runs until stopped).
    auto_stop_hours = models.PositiveSmallIntegerField(null=True, blank=True)
    auto_stop_at = models.DateTimeField(null=True, blank=True)
    # Running totals, added to by the gateway's once-a-second flush.
    invocation_times = models.PositiveBigIntegerField(default=0, editable=False)
    failed_times = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # The task working on a transitional status holds a lease that it renews
    # while it works; the reconcile loop re-enqueues the work once a lease has
    # lapsed (e.g. the worker died), so no transition is ever stranded.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when a deploy has started its containers and handed the wait for
    # their health checks to the periodic prober (services.lifecycle.deploys_probe),
    # so no worker is held while a slow or broken model comes up.
    health_wait_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the reconcile loop last enqueued the work again (it does so at most
    # once per services.reconcile.UNCLAIMED_GRACE_SECONDS while nobody claims it).
    requeued_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Not columns: set only on the rows services.selectors.service_detail_for
    # returns (its Prefetch to_attr=...).
    instance_rows: list[Instance]
    event_rows: list[ServiceEvent]
    update_rows: list[ServiceUpdate]
    # Set on the operators' list rows (services.selectors.service_page_for).
    owner_list_url: str

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="service_unique_name_per_owner"),
            models.CheckConstraint(
                condition=models.Q(traffic_limit__isnull=True)
                | models.Q(traffic_limit__gte=1, traffic_limit__lte=100_000),
                name="service_traffic_limit_range",
            ),
            models.CheckConstraint(
                condition=models.Q(auto_stop_hours__isnull=True) | models.Q(auto_stop_hours__in=[1, 2, 4, 8, 24]),
                name="service_auto_stop_hours_choices",
            ),
            models.CheckConstraint(
                condition=models.Q(timeout_minutes__gte=1, timeout_minutes__lte=120), name="service_timeout_range"
            ),
            models.CheckConstraint(
                condition=~models.Q(second_pool=models.F("pool")), name="service_second_pool_differs"
            ),
        ]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_transitional(self) -> bool:
        return self.status in TRANSITIONAL_STATUSES

    @property
    def deploying_seconds(self) -> int:
        """Seconds since the service last changed status (for a Deploying one: since the deploy began)."""
        return int((timezone.now() - self.status_changed_at).total_seconds())

    @property
    def timeout_seconds(self) -> int:
        return self.timeout_minutes * 60

    @property
    def is_callable(self) -> bool:
        """The gateway routes calls to it (it may still have no healthy instance)."""
        return self.status in CALLABLE_STATUSES

    @property
    def is_supervised(self) -> bool:
        """Serving (Running, Alarm or Abnormal): the reconcile loop keeps its instances up."""
        return self.status in SUPERVISED_STATUSES

    @property
    def can_start(self) -> bool:
        return can_transition(self.status, ServiceStatus.DEPLOYING)

    @property
    def can_stop(self) -> bool:
        return can_transition(self.status, ServiceStatus.STOPPING)

    @property
    def can_delete(self) -> bool:
        return can_transition(self.status, ServiceStatus.DELETING)

    def config_rows(self) -> list[dict[str, object]]:
        """The serving configurations as the REST API and the update history show them."""
        configs = self.configs.select_related("app_version__application", "flavor").filter(phase=ConfigPhase.SERVING)
        return [config.summary() for config in configs.order_by("position")]

    @property
    def is_multi_pool(self) -> bool:
        return self.second_pool_id is not None

    def pool_for_instance(self, index: int) -> int:
        """The id of the pool an instance of this index runs in: with multi-pool
        load balancing, even indexes in the first pool and odd ones in the second."""
        if self.second_pool_id is not None and index % 2:
            return self.second_pool_id
        return self.pool_id

    @property
    def can_update(self) -> bool:
        """Its versions and instances can be changed by a live update now."""
        return self.status in UPDATABLE_STATUSES


class ServiceVersionConfig(models.Model):
    """One AI application version inside a service, with its own traffic weight,
    flavor, instance count and environment."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="configs")
    position = models.PositiveSmallIntegerField(default=0)
    app_version = models.ForeignKey(AIApplicationVersion, on_delete=models.PROTECT, related_name="service_configs")
    weight = models.PositiveSmallIntegerField(default=100)
    flavor = models.ForeignKey("pools.Flavor", on_delete=models.PROTECT, related_name="service_configs")
    instance_count = models.PositiveIntegerField(default=1)
    envs = models.JSONField(default=dict, blank=True)
    phase = models.CharField(max_length=8, choices=ConfigPhase.choices, default=ConfigPhase.SERVING)
    # On a Swarm pool: the Swarm service that runs its instances when it took
    # over the one of the configuration it replaced, by Swarm's own rolling
    # update; "" when it has its own (services.instance_runtime.config_swarm_name).
    swarm_service = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["service", "position"]
        constraints = [
            models.UniqueConstraint(fields=["service", "position"], name="service_config_unique_position"),
            models.CheckConstraint(condition=models.Q(weight__lte=100), name="service_config_weight_max"),
            models.CheckConstraint(condition=models.Q(instance_count__gte=1), name="service_config_instances_min"),
        ]

    def __str__(self) -> str:
        return f"{self.service.name} / {self.app_version}"

    def summary(self) -> dict[str, object]:
        """The configuration as the REST API and the update history show it;
        needs `app_version__application` and `flavor` selected."""
        return {
            "model_id": self.app_version_id,
            "model_name": self.app_version.application.name,
            "model_version": self.app_version.version,
            "weight": self.weight,
            "specification": self.flavor.code,
            "instance_count": self.instance_count,
            "envs": self.envs or {},
        }


class Instance(models.Model):
    """One container of a service. Written before its container is created, so
    the reconcile loop never mistakes a container being created for an orphan."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="instances")
    config = models.ForeignKey(ServiceVersionConfig, on_delete=models.CASCADE, related_name="instances")
    index = models.PositiveIntegerField()
    node = models.ForeignKey("pools.Node", on_delete=models.PROTECT, related_name="instances")
    container_name = models.CharField(max_length=128, unique=True)
    container_id = models.CharField(max_length=64, blank=True)
    host_port = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=InstanceState.choices, default=InstanceState.PENDING)
    is_healthy = models.BooleanField(default=False)
    # What the last health probe of a deploy got ("connection refused", "answered 500 …").
    probe_note = models.CharField(max_length=200, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    # Restarts since the instance was last seen healthy; the reconcile loop
    # waits longer between restarts of an instance that keeps dying.
    crash_streak = models.PositiveIntegerField(default=0)
    restarted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["config__position", "index"]
        constraints = [
            models.UniqueConstraint(fields=["config", "index"], name="instance_unique_index_per_config"),
        ]

    def __str__(self) -> str:
        return self.container_name


class ServiceEvent(models.Model):
    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.CharField(max_length=500)
    detail = models.TextField(blank=True, help_text="e.g. the last log lines of a failed container")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.message


class ServiceCallStat(models.Model):
    """Calls to one version of a service within one minute, written by the gateway."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="call_stats")
    # NULL once an update removed the version: its calls still count in the
    # service's series. No database constraint, for the reason DataCollectionRecord.config gives.
    config = models.ForeignKey(
        ServiceVersionConfig,
        on_delete=models.SET_NULL,
        null=True,
        db_constraint=False,
        related_name="call_stats",
    )
    bucket_start = models.DateTimeField()
    calls = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    # Of the failed calls, those the traffic limit refused (429).
    limited = models.PositiveBigIntegerField(default=0)
    latency_hist = ArrayField(models.BigIntegerField(), size=LATENCY_BUCKET_COUNT)

    class Meta:
        ordering = ["bucket_start"]
        constraints = [
            models.UniqueConstraint(fields=["service", "config", "bucket_start"], name="call_stat_unique_bucket"),
        ]


class ServiceUpdate(models.Model):
    """One change a user asked of a service's versions or description: who,
    when, the configuration before and after, and how it ended. A live update
    (in progress) also holds the plan the worker carries out."""

    class Outcome(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        SUCCEEDED = "succeeded", "Succeeded"
        ROLLED_BACK = "rolled_back", "Rolled back"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="updates")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.IN_PROGRESS)
    reason = models.CharField(max_length=500, blank=True)
    # {"description": ..., "config": [rows as the API shows them]}
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    # What the cut-over does: {"weights": {"<config id>": weight}, "remove": [config ids]}.
    plan = models.JSONField(default=dict)
    # Whether it moves containers (a live update) or only weights and words.
    is_live = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["service"],
                condition=models.Q(outcome="in_progress"),
                name="service_update_one_in_progress",
            ),
        ]

    def __str__(self) -> str:
        return f"update {self.id} of {self.service_id}"


class DataCollectionRule(models.Model):
    """Which calls of a service the gateway keeps, and for how long (off by default).

    The gateway reads the rule with the service's routing row and hears of a
    change by push (the triggers of migration 0008)."""

    class Content(models.TextChoices):
        # gateway/store.py SERVICE_COLUMNS names these values in SQL.
        REQUEST = "request", "Request"
        RESPONSE = "response", "Response"
        BOTH = "both", "Request and response"

    service = models.OneToOneField(Service, on_delete=models.CASCADE, primary_key=True, related_name="collection_rule")
    is_enabled = models.BooleanField(default=False)
    # The share of calls kept, chosen at random per call.
    sample_percent = models.PositiveSmallIntegerField(default=100)
    content = models.CharField(max_length=8, choices=Content.choices, default=Content.BOTH)
    # Retention, applied by a periodic purge: records older than keep_days, and
    # all but the newest keep_records. At least one is set, so records never pile up.
    keep_days = models.PositiveSmallIntegerField(null=True, blank=True, default=7)
    keep_records = models.PositiveIntegerField(null=True, blank=True, default=10_000)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(sample_percent__gte=1, sample_percent__lte=100),
                name="collection_rule_sample_percent_range",
            ),
            models.CheckConstraint(
                condition=models.Q(content__in=["request", "response", "both"]), name="collection_rule_content_choices"
            ),
            models.CheckConstraint(
                condition=models.Q(keep_days__isnull=True) | models.Q(keep_days__gte=1, keep_days__lte=30),
                name="collection_rule_keep_days_range",
            ),
            models.CheckConstraint(
                condition=models.Q(keep_records__isnull=True)
                | models.Q(keep_records__gte=1, keep_records__lte=100_000),
                name="collection_rule_keep_records_range",
            ),
            models.CheckConstraint(
                condition=models.Q(keep_days__isnull=False) | models.Q(keep_records__isnull=False),
                name="collection_rule_has_retention",
            ),
        ]

    def __str__(self) -> str:
        return f"collection of {self.service_id}"

    @property
    def retention_label(self) -> str:
        """The rule's limits as people read them: "7 days, at most 10,000 records"."""
        parts = []
        if self.keep_days:
            parts.append(f"{self.keep_days} day{'s' if self.keep_days != 1 else ''}")
        if self.keep_records:
            parts.append(f"at most {self.keep_records:,} record{'s' if self.keep_records != 1 else ''}")
        return ", ".join(parts)

    @property
    def keeps_request(self) -> bool:
        return self.content in (self.Content.REQUEST, self.Content.BOTH)

    @property
    def keeps_response(self) -> bool:
        return self.content in (self.Content.RESPONSE, self.Content.BOTH)


class DataCollectionRecord(models.Model):
    """One collected call, written by the gateway's once-a-second flush.

    A body not kept is NULL; a kept body holds at most the gateway's cap
    (DATA_COLLECTION_BODY_MAX_BYTES) and `*_truncated` says whether there was
    more; `*_size` is the body's whole size as it passed."""

    id = models.BigAutoField(primary_key=True)
    # Indexed by the two indexes below, which start with it. No database
    # constraint: checking it cost the gateway's COPY two thirds of its time per
    # record. Deleting a service deletes its records; one flushed just after
    # goes with the retention purge (services.collection).
    service = models.ForeignKey(
        Service, on_delete=models.CASCADE, related_name="collected_records", db_index=False, db_constraint=False
    )
    # The configuration that answered, which may be gone since: a record is
    # read by its `version` label. No database constraint (the gateway's insert
    # must never make an update that removes a version fail at commit) and no
    # index (each one cost every collected call's insert; nothing looks records
    # up by configuration, and removing one leaves its records as they are).
    config = models.ForeignKey(
        ServiceVersionConfig,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="collected_records",
    )
    version = models.CharField(max_length=32)
    # When the call arrived at the gateway.
    created_at = models.DateTimeField()
    request_id = models.CharField(max_length=128, blank=True)
    method = models.CharField(max_length=16)
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField()
    request_body = models.BinaryField(null=True)
    request_size = models.PositiveBigIntegerField(default=0)
    request_content_type = models.CharField(max_length=200, blank=True)
    request_truncated = models.BooleanField(default=False)
    response_body = models.BinaryField(null=True)
    response_size = models.PositiveBigIntegerField(default=0)
    response_content_type = models.CharField(max_length=200, blank=True)
    response_truncated = models.BooleanField(default=False)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Newest first per service (the tab, the export, the purge by count).
            # In the database this is the primary key's index (migration 0014):
            # the key is (service, id), and id alone has no index of its own.
            models.Index(fields=["service", "id"], name="collected_service_id"),
            # By age (the purge by days): records arrive in time order, so a
            # BRIN index finds the old ones at a fraction of a B-tree's cost per insert.
            BrinIndex(fields=["created_at"], name="collected_created_brin"),
        ]

    def __str__(self) -> str:
        return f"record {self.id} of {self.service_id}"
