from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

# How far a pool may sell its engines' CPU and memory beyond what they have:
# 1.0 is no overcommit; past 16 the limits stop meaning anything.
OVERCOMMIT_MIN = Decimal("1.0")
OVERCOMMIT_MAX = Decimal("16.0")


def overcommit_rule(label: str) -> str:
    return f"{label} overcommit must be from {OVERCOMMIT_MIN} (none) to {OVERCOMMIT_MAX}."


def _overcommit_field(label: str, resource: str) -> models.DecimalField:
    message = overcommit_rule(label)
    return models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=OVERCOMMIT_MIN,
        validators=[MinValueValidator(OVERCOMMIT_MIN, message), MaxValueValidator(OVERCOMMIT_MAX, message)],
        help_text=f"Instances may be given this many times the {resource} its engines have (1.0: no overcommit).",
    )


class PoolKind(models.TextChoices):
    # Standalone engines, added one by one; the console places and restarts containers.
    ENGINES = "engines", "Docker engines"
    # One swarm, by its manager's URL; its nodes are read from the swarm.
    SWARM = "swarm", "Docker Swarm"


class ResourcePool(models.Model):
    """A group of Docker engines (nodes) that services are placed on.

    A public pool is offered to every user; a dedicated pool only to its owner.
    """

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=PoolKind.choices, default=PoolKind.ENGINES, editable=False)
    manager_url = models.CharField(
        max_length=200, blank=True, editable=False, help_text="A Swarm pool's manager, as a Docker API URL."
    )
    description = models.CharField(max_length=200, blank=True)
    is_public = models.BooleanField(default=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="dedicated_pools",
        help_text="Owner of a dedicated pool; empty for a public pool.",
    )
    cpu_overcommit = _overcommit_field("CPU", "CPU")
    memory_overcommit = _overcommit_field("Memory", "memory")
    # Which flavors users may deploy here. A flag rather than "no flavors
    # chosen means all": an empty choice reads as "none", and a pool that offers
    # every flavor also offers the ones added after it was set up.
    offers_every_flavor = models.BooleanField(default=True)
    flavors: models.ManyToManyField[Flavor, Any] = models.ManyToManyField(
        "Flavor",
        blank=True,
        related_name="offering_pools",
        help_text="The flavors offered when the pool does not offer every flavor.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-is_public", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(is_public=True, owner__isnull=True) | models.Q(is_public=False, owner__isnull=False),
                name="pool_public_xor_owner",
                violation_error_message="A public pool has no owner; a dedicated pool has one.",
            ),
            models.CheckConstraint(
                condition=models.Q(cpu_overcommit__gte=OVERCOMMIT_MIN, cpu_overcommit__lte=OVERCOMMIT_MAX),
                name="pool_cpu_overcommit_range",
            ),
            models.CheckConstraint(
                condition=models.Q(kind=PoolKind.ENGINES, manager_url="")
                | (models.Q(kind=PoolKind.SWARM) & ~models.Q(manager_url="")),
                name="pool_manager_url_of_swarm_only",
                violation_error_message="A Swarm pool has a manager URL; a pool of Docker engines has none.",
            ),
            models.CheckConstraint(
                condition=models.Q(memory_overcommit__gte=OVERCOMMIT_MIN, memory_overcommit__lte=OVERCOMMIT_MAX),
                name="pool_memory_overcommit_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_swarm(self) -> bool:
        return self.kind == PoolKind.SWARM


class Node(models.Model):
    """One Docker engine. Its capacity is read from the engine by the reconcile
    loop; a Swarm pool's nodes, from its manager (docker_host is the manager's URL)."""

    pool = models.ForeignKey(ResourcePool, on_delete=models.PROTECT, related_name="nodes")
    name = models.SlugField(max_length=64, unique=True)
    docker_host = models.CharField(max_length=200, help_text="Docker API address, e.g. unix:///var/run/docker.sock")
    is_enabled = models.BooleanField(default=True)
    gpu_count = models.PositiveIntegerField(default=0, help_text="GPUs the operator made available on this engine.")
    cpu_count = models.PositiveIntegerField(default=0, editable=False)
    memory_mib = models.PositiveIntegerField(default=0, editable=False)
    is_reachable = models.BooleanField(default=False, editable=False)
    last_error = models.CharField(max_length=300, blank=True, editable=False)
    checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # A Swarm node: its ID in the swarm, where its published ports answer
    # (its advertise address) and its availability (active, pause, drain).
    swarm_node_id = models.CharField(max_length=64, blank=True, editable=False)
    address = models.CharField(max_length=100, blank=True, editable=False)
    availability = models.CharField(max_length=16, blank=True, editable=False)

    class Meta:
        ordering = ["pool__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["pool", "swarm_node_id"],
                condition=~models.Q(swarm_node_id=""),
                name="node_swarm_id_unique_in_pool",
            ),
        ]

    @property
    def is_offered(self) -> bool:
        """Whether new instances may land here: enabled, answering, and (on Swarm) active."""
        return self.is_enabled and self.is_reachable and self.availability in ("", "active")

    def __str__(self) -> str:
        return self.name


class Flavor(models.Model):
    """A compute specification: the CPU and memory limits of one instance."""

    code = models.CharField(max_length=64, unique=True, help_text="e.g. cpu.1u1g")
    display_name = models.CharField(max_length=100)
    # The validators put the rule under the field in forms (the admin's too);
    # the constraints below hold it in the database.
    cpus = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        validators=[MinValueValidator(Decimal("0.01"), "A flavor needs more than 0 vCPUs.")],
    )
    memory_mib = models.PositiveIntegerField(
        validators=[MinValueValidator(16, "A flavor needs at least 16 MiB of memory.")]
    )
    gpus = models.PositiveIntegerField(default=0)
    is_free = models.BooleanField(default=False)
    sort_order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "code"]
        constraints = [
            models.CheckConstraint(condition=models.Q(cpus__gt=0), name="flavor_cpus_positive"),
            models.CheckConstraint(condition=models.Q(memory_mib__gte=16), name="flavor_memory_min"),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.code})"


class UserQuota(models.Model):
    """What one user may hold, where staff set it; an empty field means the
    setting's default (settings.QUOTA_* and MAX_*_PER_USER). A user without a
    row has every default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="quota"
    )
    vcpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="vCPUs of public pools and of dedicated pools' nodes together."
    )
    gpus = models.PositiveIntegerField(null=True, blank=True)
    max_services = models.PositiveIntegerField(null=True, blank=True, help_text="Real-time services, in any status.")
    max_instances = models.PositiveIntegerField(null=True, blank=True, help_text="Instances of all services together.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "user quota"

    def __str__(self) -> str:
        return f"quota of {self.user}"
