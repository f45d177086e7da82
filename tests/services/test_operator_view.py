"""The operators' view: staff see every user's services (an Owner column and
filter, pool and node filters, an overview line), open any service's Overview
and Monitoring, and Stop or Start it with an event naming them; ordinary users
see only their own, whatever the URL asks (every URL is tried)."""

import html

import pytest
from django.urls import reverse

from access.actions import app_code_create
from access.models import AppCode
from services.choices import ServiceStatus
from services.models import Instance, Service, ServiceEvent
from tests.factories import add_node, make_service, make_user, make_version

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return html.unescape(response.content.decode())


@pytest.fixture
def operator(db):
    user = make_user("operator")
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def spread(owner, other_user, pool, flavors):
    """alice-svc (owner's, Running, on node "local") and bob-svc (other user's,
    Stopped, on node "second", which does not answer)."""
    second = add_node(pool, "second", is_reachable=False)
    alice = make_service(owner, pool, version=make_version(owner), flavor=flavors["small"], name="alice-svc")
    bob = make_service(
        other_user,
        pool,
        version=make_version(other_user),
        flavor=flavors["small"],
        name="bob-svc",
        status=ServiceStatus.STOPPED,
    )
    Instance.objects.create(
        service=alice, config=alice.configs.get(), index=0, node=pool.nodes.get(name="local"), container_name="a-0"
    )
    Instance.objects.create(service=bob, config=bob.configs.get(), index=0, node=second, container_name="b-0")
    return alice, bob


def test_staff_list_every_users_services_with_owner_overview_and_filters(operator_client, spread, pool):
    alice, bob = spread
    page = text(operator_client.get(reverse("services:list") + "?scope=all"))

    assert "alice-svc" in page and "bob-svc" in page
    assert "<th>Owner</th>" in page
    assert ">owner</a>" in page and ">other</a>" in page
    # The overview: instances per node, and the engine that does not answer.
    assert "local 1" in page and "second 1" in page
    assert 'class="reason">second</a>' in page

    second = pool.nodes.get(name="second")
    by_node = text(operator_client.get(reverse("services:list") + f"?scope=all&node={second.id}"))
    assert "bob-svc" in by_node and "alice-svc" not in by_node
    by_owner = text(operator_client.get(reverse("services:list") + f"?scope=all&owner={alice.owner_id}"))
    assert "alice-svc" in by_owner and "bob-svc" not in by_owner
    by_pool = text(operator_client.get(reverse("services:list") + f"?scope=all&pool={pool.id}"))
    assert "alice-svc" in by_pool and "bob-svc" in by_pool


def test_staff_see_only_their_own_services_unless_they_ask_for_all(operator_client, spread):
    page = text(operator_client.get(reverse("services:list")))

    assert "alice-svc" not in page and "bob-svc" not in page
    assert "All users (operators)" in page


def test_an_ordinary_user_asking_for_all_users_sees_only_their_own(owner_client, spread, pool):
    alice, bob = spread
    both = f"&watch={alice.id}&watch={bob.id}"  # as the list's poll would ask
    for query in ("?scope=all", f"?scope=all&owner={bob.owner_id}", "?scope=all&node=1", f"?scope=all&pool={pool.id}"):
        for suffix, headers in (("", {}), (both, {"HTTP_HX_REQUEST": "true"})):
            page = text(owner_client.get(reverse("services:list") + query + suffix, **headers))
            assert "alice-svc" in page, query
            assert "bob-svc" not in page, query
            assert "Owner" not in page and "Instances per node" not in page


def every_service_url(service: Service, code_id: int) -> list[tuple[str, str]]:
    detail = reverse("services:detail", args=[service.id])
    return [
        ("get", detail),
        ("get", detail + "?tab=prediction"),
        ("get", detail + "?tab=usage"),
        ("get", detail + "?tab=monitoring"),
        ("get", detail + "?part=logs"),
        ("post", reverse("services:start", args=[service.id])),
        ("post", reverse("services:stop", args=[service.id])),
        ("post", reverse("services:delete", args=[service.id])),
        ("post", reverse("services:predict", args=[service.id])),
        ("post", reverse("services:app_code_create", args=[service.id])),
        ("post", reverse("services:app_code_revoke", args=[service.id, code_id])),
    ]


def test_an_ordinary_user_gets_404_on_every_url_of_another_users_service(owner_client, spread):
    alice, bob = spread
    code = app_code_create(service=bob).record
    for method, url in every_service_url(bob, code.id):
        for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
            response = getattr(owner_client, method)(url, **headers)
            assert response.status_code == 404, (method, url, headers)
    bob.refresh_from_db()
    assert bob.status == ServiceStatus.STOPPED
    assert not ServiceEvent.objects.filter(service=bob).exists()
    assert AppCode.objects.get(id=code.id).revoked_at is None


def test_staff_open_overview_and_monitoring_but_not_calling_tabs_of_another_users_service(operator_client, spread):
    alice, bob = spread
    detail = reverse("services:detail", args=[alice.id])

    overview = operator_client.get(detail)
    assert overview.status_code == 200
    page = text(overview)
    assert "Owner: <strong>owner</strong>" in page
    assert 'id="tab-prediction"' not in page and 'id="tab-usage"' not in page
    assert operator_client.get(detail + "?tab=monitoring").status_code == 200
    assert operator_client.get(detail, HTTP_HX_REQUEST="true").status_code == 200
    for tab in ("prediction", "usage"):
        assert operator_client.get(detail + f"?tab={tab}").status_code == 404
    assert operator_client.post(reverse("services:predict", args=[alice.id])).status_code == 404
    assert operator_client.post(reverse("services:app_code_create", args=[alice.id])).status_code == 404
    # Stop is offered, Delete is not.
    assert 'action="{}"'.format(reverse("services:stop", args=[alice.id])) in page
    assert reverse("services:delete", args=[alice.id]) not in page


def test_staff_stop_and_start_another_users_service_and_the_event_names_them(
    operator_client, spread, django_capture_on_commit_callbacks
):
    alice, bob = spread
    with django_capture_on_commit_callbacks():
        response = operator_client.post(reverse("services:stop", args=[alice.id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("services:list") + "?scope=all"
    assert Service.objects.get(id=alice.id).status == ServiceStatus.STOPPING
    with django_capture_on_commit_callbacks():
        operator_client.post(reverse("services:start", args=[bob.id]), {"next": "detail"})
    assert Service.objects.get(id=bob.id).status == ServiceStatus.DEPLOYING
    assert list(ServiceEvent.objects.filter(service=alice).values_list("message", flat=True)) == [
        "Stop requested by operator"
    ]
    assert list(ServiceEvent.objects.filter(service=bob).values_list("message", flat=True)) == [
        "Start requested by operator; deployment queued"
    ]


def test_staff_cannot_delete_another_users_service(operator_client, spread):
    alice, bob = spread

    assert operator_client.post(reverse("services:delete", args=[bob.id])).status_code == 404

    assert Service.objects.get(id=bob.id).status == ServiceStatus.STOPPED


# The page: session, user, how many match, the page, configurations, counts by
# status, the overview's nodes, the owners of the Owner filter. The poll:
# session, user, the watched rows, configurations, counts, nodes.
OPERATOR_LIST_QUERIES = 8
OPERATOR_POLL_QUERIES = 6


@pytest.mark.parametrize("users", [1, 4, 12])
def test_the_operators_list_and_poll_take_a_fixed_number_of_queries(
    operator_client, pool, flavors, django_assert_num_queries, users
):
    node = pool.nodes.get()
    for n in range(users):
        user = make_user(f"user-{n}")
        version = make_version(user)
        for m in range(3):
            service = make_service(
                user, pool, version=version, flavor=flavors["small"], name=f"s-{m}", status=ServiceStatus.DEPLOYING
            )
            Instance.objects.create(
                service=service, config=service.configs.get(), index=0, node=node, container_name=f"u{n}-s{m}-0"
            )
    url = reverse("services:list") + "?scope=all&size=50"
    on_screen = [str(service_id) for service_id in Service.objects.values_list("id", flat=True)[:50]]

    with django_assert_num_queries(OPERATOR_LIST_QUERIES):
        page = text(operator_client.get(url))
    with django_assert_num_queries(OPERATOR_POLL_QUERIES):
        poll = text(
            operator_client.get(
                reverse("services:list"), {"scope": "all", "size": 50, "watch": on_screen}, HTTP_HX_REQUEST="true"
            )
        )

    assert page.count('data-status="deploying"') == poll.count('data-status="deploying"') == min(3 * users, 50)
    assert f"local {3 * users}" in page
