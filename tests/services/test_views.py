"""Every page and action: as the owner, as another user (404), anonymously
(login), with the wrong method (405); lifecycle refusals; list polling; query
counts of the list and its polling request."""

import html
import re
import uuid

import pytest
from django.urls import reverse

from services.choices import InstanceState, ServiceStatus, VersionStatus
from services.models import AIApplication, AIApplicationVersion, Instance, Service, ServiceEvent
from tests.factories import make_service, make_version

pytestmark = pytest.mark.django_db


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def refreshed_status(service: Service) -> str:
    service.refresh_from_db(fields=["status"])
    return service.status


# --- Anonymous, other user, wrong method ---------------------------------------------


def _urls(service, version):
    application = version.application
    return {
        "list": reverse("services:list"),
        "deploy": reverse("services:deploy"),
        "deploy_flavors": reverse("services:deploy_flavors"),
        "detail": reverse("services:detail", args=[service.id]),
        "start": reverse("services:start", args=[service.id]),
        "stop": reverse("services:stop", args=[service.id]),
        "delete": reverse("services:delete", args=[service.id]),
        "applications": reverse("services:applications"),
        "application_register": reverse("services:application_register"),
        "version_recheck": reverse("services:version_recheck", args=[version.id]),
        "application_delete": reverse("services:application_delete", args=[application.id]),
    }


GET_PAGES = ["list", "deploy", "deploy_flavors", "detail", "applications", "application_register"]
POST_ACTIONS = ["start", "stop", "delete", "version_recheck", "application_delete", "deploy", "application_register"]


@pytest.mark.parametrize(
    ("name", "method"), [(name, "get") for name in GET_PAGES] + [(name, "post") for name in POST_ACTIONS]
)
def test_anonymous_user_is_sent_to_login(client, service, demo_version, name, method):
    url = _urls(service, demo_version)[name]

    response = getattr(client, method)(url)

    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"
    assert refreshed_status(service) == ServiceStatus.RUNNING
    assert Service.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("detail", "get"),
        ("start", "post"),
        ("stop", "post"),
        ("delete", "post"),
        ("version_recheck", "post"),
        ("application_delete", "post"),
    ],
)
def test_another_user_gets_404_and_changes_nothing(client, other_user, service, demo_version, name, method):
    client.force_login(other_user)
    events_before = ServiceEvent.objects.count()

    response = getattr(client, method)(_urls(service, demo_version)[name])

    assert response.status_code == 404
    assert refreshed_status(service) == ServiceStatus.RUNNING
    assert ServiceEvent.objects.count() == events_before
    demo_version.refresh_from_db()
    assert demo_version.status == VersionStatus.NORMAL
    assert AIApplication.objects.filter(id=demo_version.application_id).exists()


def test_another_user_gets_404_for_the_detail_polling_request(client, other_user, service):
    client.force_login(other_user)

    response = client.get(reverse("services:detail", args=[service.id]), HTTP_HX_REQUEST="true")

    assert response.status_code == 404


def test_another_user_cannot_delete_a_stopped_service(client, other_user, owner, pool, flavors, demo_version):
    stopped = make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="stopped", status=ServiceStatus.STOPPED
    )
    client.force_login(other_user)

    assert client.post(reverse("services:start", args=[stopped.id])).status_code == 404
    assert client.post(reverse("services:delete", args=[stopped.id])).status_code == 404
    assert refreshed_status(stopped) == ServiceStatus.STOPPED


def test_unknown_service_id_is_404(owner_client, service):
    response = owner_client.get(reverse("services:detail", args=[uuid.uuid4()]))
    assert response.status_code == 404


@pytest.mark.parametrize("name", ["start", "stop", "delete", "version_recheck", "application_delete"])
def test_get_on_an_action_is_405_and_changes_nothing(owner_client, service, demo_version, name):
    response = owner_client.get(_urls(service, demo_version)[name])

    assert response.status_code == 405
    assert refreshed_status(service) == ServiceStatus.RUNNING
    assert ServiceEvent.objects.count() == 0
    demo_version.refresh_from_db()
    assert demo_version.status == VersionStatus.NORMAL
    assert AIApplication.objects.count() == 1


@pytest.mark.parametrize("name", ["list", "detail", "applications", "deploy_flavors"])
def test_post_on_a_read_only_page_is_405(owner_client, service, demo_version, name):
    response = owner_client.post(_urls(service, demo_version)[name])
    assert response.status_code == 405


@pytest.mark.parametrize("name", ["list", "deploy", "deploy_flavors", "detail", "applications", "application_register"])
def test_owner_can_open_every_page(owner_client, service, demo_version, name):
    response = owner_client.get(_urls(service, demo_version)[name])
    assert response.status_code == 200


# --- Lifecycle actions through the views ---------------------------------------------


def test_stop_of_a_running_service_marks_it_stopping_with_one_event(
    owner_client, service, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_client.post(reverse("services:stop", args=[service.id]))

    assert response.status_code == 302
    assert response.url == reverse("services:list")
    assert refreshed_status(service) == ServiceStatus.STOPPING
    assert list(ServiceEvent.objects.values_list("message", flat=True)) == ["Stop requested by owner"]
    assert len(callbacks) == 1


def test_stop_from_the_detail_page_returns_to_the_detail_page(owner_client, service):
    response = owner_client.post(reverse("services:stop", args=[service.id]), {"next": "detail"}, follow=True)

    assert response.redirect_chain == [(reverse("services:detail", args=[service.id]), 302)]
    assert "Stopping svc-one." in page_text(response)


def test_start_of_a_stopped_service_marks_it_deploying(owner_client, owner, pool, flavors, demo_version):
    stopped = make_service(owner, pool, version=demo_version, flavor=flavors["small"], status=ServiceStatus.STOPPED)

    response = owner_client.post(reverse("services:start", args=[stopped.id]), follow=True)

    assert refreshed_status(stopped) == ServiceStatus.DEPLOYING
    assert list(ServiceEvent.objects.values_list("message", flat=True)) == [
        "Start requested by owner; deployment queued"
    ]
    assert "Starting svc-one." in page_text(response)


def test_start_while_deploying_is_refused_with_a_message(owner_client, owner, pool, flavors, demo_version):
    deploying = make_service(owner, pool, version=demo_version, flavor=flavors["small"], status=ServiceStatus.DEPLOYING)

    response = owner_client.post(reverse("services:start", args=[deploying.id]), follow=True)

    assert response.status_code == 200
    assert "Cannot start svc-one while it is Deploying." in page_text(response)
    assert refreshed_status(deploying) == ServiceStatus.DEPLOYING
    assert ServiceEvent.objects.count() == 0


def test_stop_while_stopped_is_refused_with_a_message(owner_client, owner, pool, flavors, demo_version):
    stopped = make_service(owner, pool, version=demo_version, flavor=flavors["small"], status=ServiceStatus.STOPPED)

    response = owner_client.post(reverse("services:stop", args=[stopped.id]), follow=True)

    assert "Cannot stop svc-one while it is Stopped." in page_text(response)
    assert refreshed_status(stopped) == ServiceStatus.STOPPED
    assert ServiceEvent.objects.count() == 0


def test_second_delete_is_refused_while_deleting(owner_client, service):
    url = reverse("services:delete", args=[service.id])

    first = owner_client.post(url, follow=True)
    second = owner_client.post(url, follow=True)

    assert "Deleting svc-one." in page_text(first)
    assert "Cannot delete svc-one while it is Deleting." in page_text(second)
    assert refreshed_status(service) == ServiceStatus.DELETING
    assert list(ServiceEvent.objects.values_list("message", flat=True)) == ["Delete requested by owner"]


def test_delete_from_the_detail_page_returns_to_the_list(owner_client, service):
    response = owner_client.post(reverse("services:delete", args=[service.id]), {"next": "detail"})

    assert response.url == reverse("services:list")


# --- The list page --------------------------------------------------------------------


def test_list_shows_only_the_users_own_services(owner_client, service, other_user, pool, flavors):
    theirs_version = make_version(other_user, application_name="their-model")
    theirs = make_service(other_user, pool, version=theirs_version, flavor=flavors["small"], name="their-svc")

    response = owner_client.get(reverse("services:list"))

    text = page_text(response)
    assert "svc-one" in text
    assert "their-svc" not in text and "their-model" not in text
    assert f"service-{service.id}" in text
    assert f"service-{theirs.id}" not in text


def test_list_shows_application_pool_and_ready_instances(owner_client, service, pool):
    node = pool.nodes.get()
    config = service.configs.get()
    for index, healthy in enumerate([True, False]):
        Instance.objects.create(
            service=service, config=config, index=index, node=node, container_name=f"c-{index}", is_healthy=healthy
        )

    response = owner_client.get(reverse("services:list"))

    text = page_text(response)
    assert "demo-model" in text and "1.0.0" in text
    assert "public-cpu" in text
    assert '<td class="instances-cell">1/2</td>' in text


def test_list_without_services_invites_a_deploy(owner_client):
    response = owner_client.get(reverse("services:list"))
    assert "No real-time services yet." in page_text(response)
    assert "hx-get" not in response.content.decode()


@pytest.mark.parametrize("status", [ServiceStatus.DEPLOYING, ServiceStatus.STOPPING, ServiceStatus.DELETING])
def test_list_polls_while_a_service_is_in_transition(owner_client, owner, pool, flavors, demo_version, status):
    make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="steady", status=ServiceStatus.RUNNING
    )
    make_service(owner, pool, version=demo_version, flavor=flavors["small"], name="moving", status=status)

    response = owner_client.get(reverse("services:list"))

    content = response.content.decode()
    assert f'hx-get="{reverse("services:list")}"' in content
    assert 'hx-trigger="every 1s [!document.hidden]"' in content  # and not while the tab is hidden


def test_list_stops_polling_once_nothing_is_in_transition(owner_client, owner, pool, flavors, demo_version):
    make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="running", status=ServiceStatus.RUNNING
    )
    make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="stopped", status=ServiceStatus.STOPPED
    )

    page = owner_client.get(reverse("services:list"))
    fragment = owner_client.get(reverse("services:list"), HTTP_HX_REQUEST="true")

    for response in (page, fragment):
        assert "hx-get" not in response.content.decode()
        assert "every 1s" not in response.content.decode()


def test_the_lists_poll_returns_only_the_watched_rows_out_of_band_and_the_counts(
    owner_client, owner, pool, flavors, demo_version
):
    moving = make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="moving", status=ServiceStatus.DEPLOYING
    )
    make_service(owner, pool, version=demo_version, flavor=flavors["small"], name="steady")
    gone = uuid.uuid4()

    response = owner_client.get(
        reverse("services:list"), {"watch": [str(moving.id), str(gone)]}, HTTP_HX_REQUEST="true"
    )

    content = response.content.decode()
    assert response.status_code == 200
    assert content.lstrip().startswith('<div id="list-poller"')
    assert "<html" not in content and "<h1>" not in content
    assert f'<template>\n      <tr id="service-{moving.id}" data-status="deploying" hx-swap-oob="true">' in content
    assert "steady" not in content  # a settled row is not sent again
    assert f'<tr id="service-{gone}" hx-swap-oob="delete">' in content
    assert 'id="list-counts" hx-swap-oob="true"' in content
    assert 'hx-trigger="every 1s [!document.hidden]"' in content  # "moving" still moves

    moving.status = ServiceStatus.RUNNING
    moving.save()
    settled = owner_client.get(reverse("services:list"), {"watch": [str(moving.id)]}, HTTP_HX_REQUEST="true")
    assert 'data-status="running"' in settled.content.decode()
    assert "hx-trigger" not in settled.content.decode()  # nothing left to watch: the poller stops


def test_the_lists_poll_never_shows_another_users_service(owner_client, other_user, pool, flavors):
    theirs = make_service(
        other_user,
        pool,
        version=make_version(other_user),
        flavor=flavors["small"],
        name="theirs",
        status=ServiceStatus.DEPLOYING,
    )

    response = owner_client.get(reverse("services:list"), {"watch": [str(theirs.id)]}, HTTP_HX_REQUEST="true")

    assert "theirs" not in response.content.decode()
    assert f'<tr id="service-{theirs.id}" hx-swap-oob="delete">' in response.content.decode()


def _services(owner, pool, flavors, demo_version, count: int) -> None:
    node = pool.nodes.get()
    for n in range(count):
        service = make_service(
            owner, pool, version=demo_version, flavor=flavors["small"], name=f"svc-{n}", status=ServiceStatus.DEPLOYING
        )
        Instance.objects.create(
            service=service, config=service.configs.get(), index=0, node=node, container_name=f"svc-{n}-0"
        )


# The page: session, user, how many match, the page of annotated services,
# their configurations (with version, application and flavor), the counts by
# status, the applications of the filter. The poll: session, user, the watched
# rows, their configurations, the counts. The same for any number of services.
LIST_QUERIES = 7
POLL_QUERIES = 5


@pytest.mark.parametrize("count", [1, 5, 60])
def test_list_query_count_does_not_grow_with_services(
    owner_client, owner, pool, flavors, demo_version, django_assert_num_queries, count
):
    _services(owner, pool, flavors, demo_version, count)

    with django_assert_num_queries(LIST_QUERIES):
        response = owner_client.get(reverse("services:list") + "?size=50")

    assert page_text(response).count('data-status="deploying"') == min(count, 50)


@pytest.mark.parametrize("count", [1, 5, 60])
def test_list_polling_query_count_does_not_grow_with_services(
    owner_client, owner, pool, flavors, demo_version, django_assert_num_queries, count
):
    _services(owner, pool, flavors, demo_version, count)
    on_screen = [str(service_id) for service_id in Service.objects.values_list("id", flat=True)[:10]]

    with django_assert_num_queries(POLL_QUERIES):
        response = owner_client.get(reverse("services:list"), {"watch": on_screen}, HTTP_HX_REQUEST="true")

    # The poll brings the watched rows on screen (10 at most by default), not every service.
    assert page_text(response).count('data-status="deploying"') == min(count, 10)


def test_the_list_pages_searches_filters_and_sorts_and_keeps_it_in_the_url(
    owner_client, owner, pool, flavors, demo_version
):
    other_app = make_version(owner, application_name="other-app")
    for n in range(12):
        make_service(
            owner,
            pool,
            version=demo_version,
            flavor=flavors["small"],
            name=f"alpha-{n:02d}",
            status=ServiceStatus.RUNNING,
        )
    make_service(owner, pool, version=other_app, flavor=flavors["small"], name="beta", status=ServiceStatus.FAILED)

    def names(params: str) -> list[str]:
        text = owner_client.get(reverse("services:list") + params).content.decode()
        return re.findall(r'<a href="/services/[0-9a-f-]+/">([^<]+)</a>', text)

    first = names("?sort=name")
    assert first == [
        "alpha-00",
        "alpha-01",
        "alpha-02",
        "alpha-03",
        "alpha-04",
        "alpha-05",
        "alpha-06",
        "alpha-07",
        "alpha-08",
        "alpha-09",
    ]
    assert names("?sort=name&page=2") == ["alpha-10", "alpha-11", "beta"]
    assert names("?sort=-name&size=20")[:2] == ["beta", "alpha-11"]
    assert names("?q=BET") == ["beta"]
    assert names("?status=failed") == ["beta"]
    assert names(f"?app={other_app.application_id}") == ["beta"]
    assert names("?q=nothing-like-it") == []
    # Nonsense in the URL falls back to the defaults instead of breaking the page.
    assert len(names("?page=999&size=7&sort=bogus&status=nope&app=x")) == 3  # the last page of 10

    page = owner_client.get(reverse("services:list") + "?sort=name").content.decode()
    assert 'href="?sort=name&amp;page=2" rel="next"' in page
    assert "Page 1 of 2 · 13 services" in page
    assert 'class="count count-running">Running 12</a>' in page


# --- The detail page ------------------------------------------------------------------


@pytest.fixture
def detailed_service(owner, pool, flavors, demo_version) -> Service:
    service = make_service(
        owner,
        pool,
        version=demo_version,
        flavor=flavors["small"],
        name="svc-detail",
        description="serves the demo",
        timeout_minutes=7,
        envs={"MODEL_DIR": "/models"},
    )
    node = pool.nodes.get()
    Instance.objects.create(
        service=service,
        config=service.configs.get(),
        index=0,
        node=node,
        container_name=f"rts-{service.id}-0-0",
        host_port=31999,
        state=InstanceState.RUNNING,
        is_healthy=True,
    )
    ServiceEvent.objects.create(service=service, message="Deployment queued: 1 instance(s) on pool public-cpu")
    ServiceEvent.objects.create(service=service, message="Running: 1/1 instance(s) healthy")
    return service


def test_detail_shows_configuration_instances_and_events(owner_client, detailed_service):
    service = detailed_service

    response = owner_client.get(reverse("services:detail", args=[service.id]))

    assert response.status_code == 200
    text = page_text(response)
    # configuration
    assert "serves the demo" in text
    assert "<dt>Resource pool</dt><dd>public-cpu</dd>" in text
    assert "<dt>Timeout</dt><dd>7 minutes</dd>" in text
    assert '<td data-label="Traffic ratio">100%</td>' in text
    assert '<td data-label="Specification">CPU: 1 vCPU | 512 MiB</td>' in text
    assert "<code>MODEL_DIR=/models</code>" in text
    assert "<code>rts-demo-model:1.0.0</code>" in text
    # instances
    assert f"<code>rts-{service.id}-0-0</code>" in text
    assert "127.0.0.1:31999" in text
    assert '<span class="ok">Healthy</span>' in text
    assert "<dd>1/1</dd>" in text
    # events, newest first, each with its timestamp
    for event in service.events.all():
        stamp = event.created_at.strftime("%Y-%m-%d %H:%M:%S")
        assert f'<time datetime="{event.created_at.isoformat()}">{stamp}</time>' in text
    assert text.index("Running: 1/1 instance(s) healthy") < text.index("Deployment queued: 1 instance(s)")


def test_detail_polls_only_while_in_transition(owner_client, owner, pool, flavors, demo_version, detailed_service):
    deploying = make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="moving", status=ServiceStatus.DEPLOYING
    )

    steady = owner_client.get(reverse("services:detail", args=[detailed_service.id]))
    moving = owner_client.get(reverse("services:detail", args=[deploying.id]))

    assert "hx-get" not in steady.content.decode()
    assert f'hx-get="{reverse("services:detail", args=[deploying.id])}"' in moving.content.decode()


def test_detail_polling_request_returns_only_the_live_part(owner_client, detailed_service):
    response = owner_client.get(reverse("services:detail", args=[detailed_service.id]), HTTP_HX_REQUEST="true")

    content = response.content.decode()
    # The buttons of the status it shows, out of band, then the live part itself.
    assert content.lstrip().startswith('<div class="head-actions" id="head-actions" hx-swap-oob="true">')
    assert '<div id="service-live"' in content
    assert "Running: 1/1 instance(s) healthy" in content
    assert "<html" not in content and "<h2>Configuration</h2>" not in content


def test_detail_offers_only_the_actions_the_status_allows(owner_client, owner, pool, flavors, demo_version):
    running = make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="running", status=ServiceStatus.RUNNING
    )
    stopped = make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="stopped", status=ServiceStatus.STOPPED
    )

    running_page = owner_client.get(reverse("services:detail", args=[running.id])).content.decode()
    stopped_page = owner_client.get(reverse("services:detail", args=[stopped.id])).content.decode()

    assert reverse("services:stop", args=[running.id]) in running_page
    assert reverse("services:start", args=[running.id]) not in running_page
    assert reverse("services:start", args=[stopped.id]) in stopped_page
    assert reverse("services:stop", args=[stopped.id]) not in stopped_page


# --- Applications pages ------------------------------------------------------------------


def test_applications_list_shows_only_the_users_applications(owner_client, demo_version, other_user):
    make_version(other_user, application_name="their-model")

    response = owner_client.get(reverse("services:applications"))

    text = page_text(response)
    assert "demo-model" in text
    assert "their-model" not in text


def test_version_recheck_marks_the_version_checking_again(owner_client, owner):
    version = make_version(owner, status=VersionStatus.FAILED, status_reason="image gone")

    response = owner_client.post(reverse("services:version_recheck", args=[version.id]))

    assert response.url == reverse("services:applications")
    version.refresh_from_db()
    assert (version.status, version.status_reason) == (VersionStatus.CHECKING, "")


def test_application_delete_removes_an_unused_application(owner_client, demo_version):
    url = reverse("services:application_delete", args=[demo_version.application_id])

    response = owner_client.post(url, follow=True)

    assert "Deleted demo-model." in page_text(response)
    assert not AIApplication.objects.exists()
    assert not AIApplicationVersion.objects.exists()
