"""The service page's tabs and its Usage Guide: each tab as the owner, as
another user (404); the Overview keeps its live polling; the Usage Guide shows
the real URL, the headers and ready snippets."""

import html
import re

import pytest
from django.urls import reverse

from services.choices import ServiceStatus
from services.models import Service

pytestmark = pytest.mark.django_db

TABS = ["overview", "prediction", "usage", "monitoring"]


def tab_url(service, tab: str) -> str:
    return reverse("services:detail", args=[service.id]) + f"?tab={tab}"


@pytest.mark.parametrize("tab", TABS)
def test_each_tab_opens_with_its_link_marked(owner_client, service, tab):
    response = owner_client.get(tab_url(service, tab))

    assert response.status_code == 200
    content = response.content.decode()
    assert content.count('aria-current="page"') == 1
    assert f'id="tab-{tab}" class="tab active" aria-current="page"' in content
    for other in TABS:
        href = reverse("services:detail", args=[service.id]) + ("" if other == "overview" else f"?tab={other}")
        assert f'<a href="{href}" id="tab-{other}"' in content


@pytest.mark.parametrize("tab", TABS + ["nonsense"])
def test_another_user_gets_404_on_every_tab(client, other_user, service, tab):
    client.force_login(other_user)

    assert client.get(tab_url(service, tab)).status_code == 404


def test_an_unknown_tab_shows_the_overview(owner_client, service):
    content = owner_client.get(tab_url(service, "nonsense")).content.decode()

    assert 'id="tab-overview" class="tab active"' in content
    assert "<h2>Configuration</h2>" in content


def test_only_the_overview_polls_while_the_service_is_in_transition(owner_client, service):
    Service.objects.filter(id=service.id).update(status=ServiceStatus.DEPLOYING)
    poll = f'hx-get="{reverse("services:detail", args=[service.id])}" hx-trigger="every 1s"'

    overview = owner_client.get(reverse("services:detail", args=[service.id])).content.decode()
    others = [owner_client.get(tab_url(service, tab)).content.decode() for tab in ("prediction", "usage", "monitoring")]

    assert poll in overview
    assert all("hx-get" not in content for content in others)
    # Tabs other than the Overview show the status next to the name instead.
    assert all('<span class="badge status-deploying"' in content.split("</h1>", 1)[0] for content in others)


def test_the_usage_guide_shows_the_url_headers_and_snippets_with_the_real_url(owner_client, service, settings):
    settings.GATEWAY_URL = "https://infer.example.com:8443"
    api_url = f"https://infer.example.com:8443/v1/infers/{service.id}"

    response = owner_client.get(tab_url(service, "usage"))

    text = html.unescape(response.content.decode())
    assert f'<code class="copy-value" id="api-url">{api_url}</code>' in text
    assert "<code>X-Auth-Token</code>" in text
    assert "<code>Bearer <YOUR_TOKEN></code>" in text
    assert "<code>X-Apig-AppCode</code>" in text
    assert f'<a href="{reverse("access:keys")}">Access keys</a>' in text
    assert '<a href="#app-codes">App codes</a>' in text
    assert 'id="app-codes"' in text
    curl = text.split('<pre id="snippet-curl">', 1)[1].split("</pre>", 1)[0]
    assert curl == (
        f"curl -X POST '{api_url}' \\\n"
        "  -H 'X-Auth-Token: <YOUR_TOKEN>' \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        """  -d '{"instances": [[1, 2, 3]]}'"""
    )
    python = text.split('<pre id="snippet-python">', 1)[1].split("</pre>", 1)[0]
    assert f'url = "{api_url}"' in python
    assert 'headers = {"X-Auth-Token": "<YOUR_TOKEN>"}' in python
    assert 'requests.post(url, json={"instances": [[1, 2, 3]]}, headers=headers, timeout=60)' in python
    # The snippet is real Python.
    compile(python, "snippet", "exec")


def test_the_usage_guide_names_the_predict_path(owner_client, service):
    text = html.unescape(owner_client.get(tab_url(service, "usage")).content.decode())

    assert re.search(r"goes to the predict path of a healthy instance\s+\(<code>/predict</code>\)", text)


@pytest.mark.django_db
def test_the_logs_refresh_while_the_service_is_in_transition_and_say_so(
    owner_client, owner, pool, flavors, demo_version
):
    from tests.factories import make_service

    deploying = make_service(owner, pool, version=demo_version, name="deploying-one", status=ServiceStatus.DEPLOYING)
    running = make_service(owner, pool, version=demo_version, name="running-one", status=ServiceStatus.RUNNING)

    page = owner_client.get(f"/services/{deploying.id}/").content.decode()
    assert f'hx-get="/services/{deploying.id}/?part=logs"' in page
    assert "refreshed every 2 s while the service is Deploying" in page
    fragment = owner_client.get(f"/services/{deploying.id}/?part=logs", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    assert fragment.content.decode().lstrip().startswith('<section class="card" id="service-logs"')

    still = owner_client.get(f"/services/{running.id}/").content.decode()
    assert "?part=logs" not in still and "as of page load" in still


@pytest.mark.django_db
def test_a_failed_deploys_removed_instance_says_so(owner_client, owner, pool, flavors, demo_version):
    from services.choices import InstanceState
    from tests.factories import add_instance, make_service

    failed = make_service(owner, pool, version=demo_version, name="failed-one", status=ServiceStatus.FAILED)
    instance = add_instance(failed, is_healthy=False)
    instance.state = InstanceState.MISSING
    instance.host_port = None
    instance.save(update_fields=["state", "host_port"])

    page = owner_client.get(f"/services/{failed.id}/").content.decode()
    assert "Removed (the deploy failed)" in page


def test_a_websocket_services_usage_guide_shows_how_to_connect_and_prediction_sends_there(
    owner_client, service, settings
):
    settings.GATEWAY_URL = "https://gateway.example.com"
    Service.objects.filter(id=service.id).update(is_websocket=True)
    ws_url = f"wss://gateway.example.com/v1/infers/{service.id}"

    usage = html.unescape(owner_client.get(tab_url(service, "usage")).content.decode())
    prediction = html.unescape(owner_client.get(tab_url(service, "prediction")).content.decode())

    assert f"websocat -H 'X-Auth-Token: <YOUR_TOKEN>' '{ws_url}'" in usage
    assert f'websockets.connect("{ws_url}", additional_headers=headers)' in usage
    assert "requests.post" not in usage
    assert "Plain HTTP calls are refused with 426" in usage
    assert 'id="prediction-form"' not in prediction
    assert "is a WebSocket service" in prediction and ws_url in prediction
