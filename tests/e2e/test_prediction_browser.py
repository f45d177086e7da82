"""The Prediction tab in real Chromium, against the real gateway and a real
container: Send shows the model's answer without a page reload; the calls then
appear on the Monitoring tab."""

import json

import pytest

from services.models import Service
from tests.conftest import wait_for_gateway_reload
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.waiting import eventually

pytestmark = [pytest.mark.browser, pytest.mark.docker]


def send_and_wait(page) -> None:
    """Press Send and wait until htmx has swapped in a new answer."""
    page.evaluate("document.querySelector('#prediction-result').dataset.old = '1'")
    page.click("#prediction-send")
    page.wait_for_selector("#prediction-result:not([data-old])")


def test_send_shows_the_models_answer_without_a_reload(console_gateway, running_demo_service, live_server, page):
    service = running_demo_service
    wait_for_gateway_reload(console_gateway)
    log_in(page, live_server)
    url = f"{live_server.url}/services/{service.id}/?tab=prediction"
    page.goto(url)
    assert page.input_value("#id_body") == '{"instances": [[1, 2, 3]]}'
    page.evaluate("window.__noReload = 1")

    send_and_wait(page)

    assert page.inner_text("#prediction-status") == "200 OK"
    answer = json.loads(page.inner_text("#prediction-body"))
    assert answer["prediction"] == 6
    assert answer["input"] == {"instances": [[1, 2, 3]]}
    assert page.inner_text("#prediction-time").endswith(" ms")
    assert page.evaluate("window.__noReload") == 1  # htmx swapped the answer in; the page stayed
    assert page.url == url
    page.screenshot(path=ARTIFACTS / "browser-prediction-200.png", full_page=True)

    # Invalid JSON: a message, nothing sent, still no reload.
    page.fill("#id_body", '{"instances": [[1, 2, 3]]')
    send_and_wait(page)
    assert "The body is not valid JSON (line 1, column 26" in page.inner_text("#prediction-result")
    assert page.locator("#prediction-status").count() == 0
    assert page.evaluate("window.__noReload") == 1
    page.screenshot(path=ARTIFACTS / "browser-prediction-invalid.png", full_page=True)

    # A file, sent as the body.
    page.check("input[name=input][value=file]")
    assert not page.is_visible("#id_body")
    page.set_input_files(
        "#id_file", files=[{"name": "numbers.json", "mimeType": "application/json", "buffer": b'{"a": [10, 20.5]}'}]
    )
    send_and_wait(page)
    assert page.inner_text("#prediction-status") == "200 OK"
    assert json.loads(page.inner_text("#prediction-body"))["prediction"] == 30.5
    assert page.evaluate("window.__noReload") == 1
    page.screenshot(path=ARTIFACTS / "browser-prediction-file.png", full_page=True)

    # The two calls that reached the model show on the Monitoring tab.
    eventually(
        lambda: Service.objects.get(id=service.id).invocation_times >= 2,
        message="the gateway never counted the calls",
    )
    page.click("#tab-monitoring")
    page.wait_for_url(f"{live_server.url}/services/{service.id}/?tab=monitoring")
    assert page.inner_text("#stat-calls") == "2"
    assert page.locator("#calls-chart .bar-calls").count() >= 1
    page.screenshot(path=ARTIFACTS / "browser-monitoring.png", full_page=True)
