"""The triggers of metering's migration open and close usage intervals in the
statement that changes an instance, a node or a pool, whoever writes it."""

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from metering.models import InstanceUsage, NodeUsage
from pools.models import Node
from services.choices import InstanceState
from services.models import Instance, Service, ServiceVersionConfig
from tests.factories import add_instance, add_node, make_service, make_user, make_version

pytestmark = pytest.mark.django_db


def set_state(instance: Instance, state: str) -> None:
    # As the lifecycle and the reconcile loop write it: an update, no signal.
    Instance.objects.filter(id=instance.id).update(state=state)


def intervals(instance: Instance) -> list[InstanceUsage]:
    return list(InstanceUsage.objects.filter(instance_id=instance.id).order_by("started_at", "id"))


def test_a_running_instance_of_a_public_pool_opens_an_interval_with_what_it_bills(service, owner, pool):
    before = timezone.now()
    instance = add_instance(service)
    after = timezone.now()

    (usage,) = intervals(instance)
    assert usage.ended_at is None
    assert before <= usage.started_at <= after
    assert (usage.service_id, usage.service_name, usage.owner_id) == (service.id, "svc-one", owner.id)
    assert (usage.pool_id, usage.pool_name) == (pool.id, "public-cpu")
    assert (usage.flavor_code, usage.cpus, usage.memory_mib, usage.gpus) == ("cpu.1u512m", Decimal("1.00"), 512, 0)


def test_a_pending_instance_opens_nothing_until_it_runs(service):
    instance = add_instance(service)
    Instance.objects.filter(id=instance.id).update(state=InstanceState.PENDING)
    InstanceUsage.objects.all().delete()
    pending = Instance.objects.create(
        service=service, config=instance.config, index=1, node=instance.node, container_name="pending-1"
    )
    assert intervals(pending) == []

    set_state(pending, InstanceState.RUNNING)

    (usage,) = intervals(pending)
    assert usage.ended_at is None


@pytest.mark.parametrize("state", [InstanceState.STOPPED, InstanceState.EXITED, InstanceState.MISSING])
def test_leaving_running_closes_the_interval_and_running_again_opens_another(service, state):
    instance = add_instance(service)
    set_state(instance, state)
    (closed,) = intervals(instance)
    assert closed.ended_at is not None and closed.ended_at >= closed.started_at

    set_state(instance, InstanceState.RUNNING)

    first, second = intervals(instance)
    assert first.ended_at == closed.ended_at
    assert second.started_at >= first.ended_at and second.ended_at is None


def test_health_and_port_changes_or_running_written_again_do_not_split_the_interval(service):
    instance = add_instance(service)
    Instance.objects.filter(id=instance.id).update(is_healthy=False, host_port=40000, probe_note="refused")
    Instance.objects.filter(id=instance.id).update(state=InstanceState.RUNNING, is_healthy=True)
    instance.restart_count = 3
    instance.save()  # a save writes every column, state included

    (usage,) = intervals(instance)
    assert usage.ended_at is None


def test_one_update_of_many_instances_closes_each_of_their_intervals(service):
    instances = [add_instance(service, index=index) for index in range(5)]

    Instance.objects.filter(service=service).update(state=InstanceState.STOPPED, is_healthy=False)

    usages = InstanceUsage.objects.filter(instance_id__in=[i.id for i in instances])
    assert usages.count() == 5
    assert not usages.filter(ended_at__isnull=True).exists()


def test_deleting_an_instance_closes_its_interval(service):
    instance = add_instance(service)
    Instance.objects.filter(id=instance.id).delete()

    (usage,) = intervals(instance)
    assert usage.ended_at is not None


def test_deleting_the_service_closes_its_instances_intervals_and_the_usage_stays(service):
    instances = [add_instance(service, index=index) for index in range(2)]
    service_id = service.id

    Service.objects.filter(id=service_id).delete()  # the instances go by cascade

    assert not Instance.objects.filter(service_id=service_id).exists()
    usages = list(InstanceUsage.objects.filter(service_id=service_id))
    assert sorted(u.instance_id for u in usages) == sorted(i.id for i in instances)
    assert all(u.ended_at is not None and u.service_name == "svc-one" for u in usages)


def test_truncating_the_instances_closes_every_open_interval(service):
    add_instance(service)
    with connection.cursor() as cursor:
        # The insert's deferred foreign-key checks must run before a TRUNCATE may.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("TRUNCATE services_instance")

    assert InstanceUsage.objects.count() == 1
    assert not InstanceUsage.objects.filter(ended_at__isnull=True).exists()


def test_times_are_those_of_the_change_even_inside_one_long_transaction(service):
    # The whole test runs in one transaction: now() would date both changes alike.
    instance = add_instance(service)
    time.sleep(0.4)
    set_state(instance, InstanceState.STOPPED)

    (usage,) = intervals(instance)
    assert timedelta(seconds=0.4) <= usage.ended_at - usage.started_at < timedelta(seconds=1)


def test_instances_of_a_dedicated_pool_are_not_metered_per_service(owner, flavors, dedicated_pool):
    service = make_service(owner, dedicated_pool, version=make_version(owner), flavor=flavors["small"])
    instance = add_instance(service)
    set_state(instance, InstanceState.STOPPED)
    set_state(instance, InstanceState.RUNNING)

    assert intervals(instance) == []


def test_a_changed_flavor_splits_the_interval_of_a_running_instance(service, flavors):
    instance = add_instance(service)
    ServiceVersionConfig.objects.filter(service=service).update(flavor=flavors["big"])

    first, second = intervals(instance)
    assert first.flavor_code == "cpu.1u512m" and first.ended_at == second.started_at
    assert (second.flavor_code, second.cpus, second.ended_at) == ("cpu.64u8g", Decimal("64.00"), None)


def test_a_service_given_to_another_user_bills_them_from_then_on(service, owner):
    instance = add_instance(service)
    someone = make_user("someone")
    Service.objects.filter(id=service.id).update(owner=someone)

    first, second = intervals(instance)
    assert (first.owner_id, second.owner_id, second.ended_at) == (owner.id, someone.id, None)


# --- Nodes of dedicated pools ---------------------------------------------------------


def test_a_node_of_a_dedicated_pool_is_metered_from_insert_to_delete(owner, dedicated_pool):
    node = add_node(dedicated_pool, "ded-2")
    (usage,) = NodeUsage.objects.filter(node_id=node.id)
    assert (usage.node_name, usage.pool_id, usage.pool_name, usage.owner_id) == (
        "ded-2",
        dedicated_pool.id,
        "dedicated-a",
        owner.id,
    )
    assert usage.ended_at is None

    Node.objects.filter(id=node.id).update(is_reachable=False, cpu_count=8)  # the reconcile loop's writes
    assert NodeUsage.objects.get(node_id=node.id).ended_at is None

    Node.objects.filter(id=node.id).delete()
    assert NodeUsage.objects.get(node_id=node.id).ended_at is not None


def test_nodes_of_public_pools_are_not_metered(pool):
    add_node(pool, "public-2")
    assert not NodeUsage.objects.exists()


def test_a_pool_that_changes_hands_or_turns_public_moves_its_metering(owner, dedicated_pool, flavors):
    node = dedicated_pool.nodes.get()
    someone = make_user("someone")
    version = make_version(owner)

    type(dedicated_pool).objects.filter(id=dedicated_pool.id).update(owner=someone)
    first, second = NodeUsage.objects.filter(node_id=node.id).order_by("started_at", "id")
    assert (first.owner_id, first.ended_at is not None) == (owner.id, True)
    assert (second.owner_id, second.ended_at) == (someone.id, None)

    service = make_service(owner, dedicated_pool, version=version, flavor=flavors["small"])
    instance = add_instance(service)
    type(dedicated_pool).objects.filter(id=dedicated_pool.id).update(owner=None, is_public=True)

    assert not NodeUsage.objects.filter(ended_at__isnull=True).exists()
    (usage,) = intervals(instance)
    assert (usage.pool_id, usage.ended_at) == (dedicated_pool.id, None)


def test_a_node_moved_to_a_public_pool_leaves_the_dedicated_metering(owner, dedicated_pool, pool):
    node = dedicated_pool.nodes.get()
    Node.objects.filter(id=node.id).update(pool=pool)

    (usage,) = NodeUsage.objects.filter(node_id=node.id)
    assert usage.ended_at is not None


def test_every_trigger_is_installed():
    # A column dropped with CASCADE would drop a trigger watching it without a word.
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'metering_%%' AND NOT tgisinternal")
        names = sorted(row[0] for row in cursor.fetchall())
    assert names == sorted(
        [
            "metering_config_flavor",
            "metering_instance_delete",
            "metering_instance_insert",
            "metering_instance_truncate",
            "metering_instance_update",
            "metering_node_delete",
            "metering_node_insert",
            "metering_node_truncate",
            "metering_node_update",
            "metering_pool_change",
            "metering_service_owner",
        ]
    )


def test_a_second_open_interval_for_one_instance_is_refused_by_the_database(service):
    from django.db import IntegrityError, transaction

    instance = add_instance(service)
    (usage,) = intervals(instance)
    usage.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        usage.save()
