"""The Prediction tab: the console sends the input through the REAL gateway to a
REAL container and shows the status, the time taken and the answer; bad input
and oversize files are refused before anything is sent; an unreachable gateway
is reported; the console token lives in the session."""

import hashlib
import html
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from access.models import AccessToken
from services.models import Service, ServiceCallStat
from services.prediction import SAMPLE_BODY, SESSION_KEY
from tests.conftest import free_port, wait_for_gateway_reload
from tests.waiting import eventually

HX = {"HTTP_HX_REQUEST": "true"}


def text_of(response) -> str:
    return html.unescape(response.content.decode())


def predict_url(service) -> str:
    return reverse("services:predict", args=[service.id])


def shown_body(response) -> str:
    match = re.search(
        r'<pre class="reply-body reply-(\w+)" id="prediction-body">(.*?)</pre>', response.content.decode(), re.DOTALL
    )
    assert match, response.content.decode()
    return html.unescape(match.group(2))


def shown_status(response) -> str:
    return html.unescape(re.search(r'id="prediction-status">([^<]*)</span>', response.content.decode()).group(1))


def console_tokens():
    return AccessToken.objects.filter(kind=AccessToken.Kind.CONSOLE)


# --- Against the real gateway and the demo model ----------------------------------


@pytest.fixture
def served_service(console_gateway, running_demo_service) -> Service:
    """The Running demo service, once the gateway's routing table lists it."""
    wait_for_gateway_reload(console_gateway)
    return running_demo_service


@pytest.fixture
def served_client(client, owner, served_service):
    client.force_login(owner)
    return client


@pytest.mark.docker
def test_json_body_goes_through_the_gateway_and_the_answer_is_shown(served_client, served_service):
    response = served_client.post(
        predict_url(served_service), {"input": "json", "body": '{"instances": [[1, 2, 3], [4.5]]}', "path": ""}, **HX
    )

    assert response.status_code == 200
    content = response.content.decode()
    assert content.lstrip().startswith('<div id="prediction-result"')  # the fragment, not the page
    assert "<html" not in content
    assert shown_status(response) == "200 OK"
    assert re.search(r'id="prediction-time">\d+\.\d ms</span>', content)
    answer = json.loads(shown_body(response))
    assert answer["prediction"] == 10.5
    assert answer["input"] == {"instances": [[1, 2, 3], [4.5]]}
    assert answer["version"] == "1.0.0"
    # Pretty-printed, as JSON is.
    assert '<pre class="reply-body reply-json"' in content
    assert '\n  "model": "rts-demo-model"' in shown_body(response)
    assert "Sent JSON, 33 bytes." in text_of(response)
    # The call went through the gateway, which counts it (flushed once a second).
    eventually(
        lambda: Service.objects.get(id=served_service.id).invocation_times >= 1,
        message="the gateway never counted the call",
    )
    assert ServiceCallStat.objects.get(service=served_service).calls == 1


@pytest.mark.docker
def test_file_sent_as_the_body_reaches_the_model_with_its_content_type(served_client, served_service):
    upload = SimpleUploadedFile("input.json", b'{"x": [4, 5], "y": 1}', content_type="application/json")

    response = served_client.post(
        predict_url(served_service), {"input": "file", "file": upload, "file_as": "body", "body": "not json"}, **HX
    )

    assert response.status_code == 200
    assert shown_status(response) == "200 OK"
    assert json.loads(shown_body(response))["prediction"] == 10
    assert "Sent input.json (21 bytes) as the request body, application/json." in text_of(response)


@pytest.mark.docker
def test_file_sent_as_multipart_arrives_as_one_form_field(served_client, served_service):
    data = bytes(range(256)) * 40
    upload = SimpleUploadedFile('cat "1".jpg', data, content_type="image/jpeg")

    response = served_client.post(
        predict_url(served_service),
        {"input": "file", "file": upload, "file_as": "multipart", "file_field": "images", "path": "/echo"},
        **HX,
    )

    assert response.status_code == 200
    echo = json.loads(shown_body(response))
    assert echo["path"] == "/echo" and echo["method"] == "POST"
    content_type = echo["headers"]["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = content_type.split("boundary=", 1)[1]
    expected = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="cat %221%22.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert echo["body_length"] == len(expected)
    assert echo["body_sha256"] == hashlib.sha256(expected).hexdigest()
    # The console's token is the gateway's business, never the model's.
    assert "x-auth-token" not in echo["headers"]


@pytest.mark.docker
def test_path_and_query_reach_the_container_and_model_errors_are_shown_as_they_are(served_client, served_service):
    response = served_client.post(
        predict_url(served_service), {"input": "json", "body": "{}", "path": "fail?status=418"}, **HX
    )

    assert response.status_code == 200
    assert shown_status(response) == "418 I'm a Teapot"
    assert 'class="http-status status-4xx"' in response.content.decode()
    assert json.loads(shown_body(response))["error"] == "I'm a Teapot"


@pytest.mark.docker
def test_a_revoked_console_token_is_replaced_and_the_call_still_succeeds(served_client, served_service):
    first = served_client.post(predict_url(served_service), {"input": "json", "body": SAMPLE_BODY}, **HX)
    assert shown_status(first) == "200 OK"
    console_tokens().update(revoked_at=AccessToken.objects.get().created_at)
    wait_for_gateway_reload(settings.GATEWAY_URL)

    second = served_client.post(predict_url(served_service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    assert shown_status(second) == "200 OK"
    assert json.loads(shown_body(second))["prediction"] == 6
    assert console_tokens().count() == 2
    assert console_tokens().filter(revoked_at__isnull=True).count() == 1


@pytest.mark.docker
def test_a_stopped_service_shows_the_gateways_503(served_client, served_service):
    Service.objects.filter(id=served_service.id).update(status="stopped")
    wait_for_gateway_reload(settings.GATEWAY_URL)

    response = served_client.post(predict_url(served_service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    assert response.status_code == 200
    assert shown_status(response) == "503 Service Unavailable"
    shown = json.loads(shown_body(response))
    assert shown.pop("request_id")
    assert shown == {
        "error_code": "RTS.5031",
        "error_msg": f"Service {served_service.id} is Stopped, not Running.",
    }


# --- Before anything is sent: a recording stand-in for the gateway -----------------


class RecordingGateway:
    """An HTTP server that records every request and answers 200 with JSON."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                recorder.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = json.dumps({"received": len(body)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_gateway(settings):
    gateway = RecordingGateway()
    settings.GATEWAY_URL = gateway.url
    yield gateway
    gateway.close()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"instances": [[1, 2, 3]]',
            "The body is not valid JSON (line 1, column 26: Expecting ',' delimiter). Nothing was sent.",
        ),
        (
            "{'single': 'quotes'}",
            "The body is not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes). Nothing was sent.",
        ),
        ("   ", "Enter a JSON body, e.g. " + SAMPLE_BODY),
    ],
)
def test_invalid_json_is_refused_with_a_message_and_nothing_is_sent(
    owner_client, service, recording_gateway, body, message
):
    response = owner_client.post(predict_url(service), {"input": "json", "body": body}, **HX)

    assert response.status_code == 400
    assert f'<p data-field="body"><strong>JSON body:</strong> {message}</p>' in text_of(response)
    assert recording_gateway.requests == []
    assert not console_tokens().exists()


@pytest.mark.django_db
def test_a_file_larger_than_8_mib_is_refused_and_nothing_is_sent(owner_client, service, recording_gateway):
    assert settings.PREDICTION_UPLOAD_MAX_BYTES == 8 * 1024 * 1024
    upload = SimpleUploadedFile("big.bin", b"\0" * (settings.PREDICTION_UPLOAD_MAX_BYTES + 1))

    response = owner_client.post(predict_url(service), {"input": "file", "file": upload, "file_as": "body"}, **HX)

    assert response.status_code == 413
    assert "The file is larger than 8 MiB (8388608 bytes); nothing was sent." in text_of(response)
    assert recording_gateway.requests == []
    assert not console_tokens().exists()


@pytest.mark.django_db
def test_a_json_body_beyond_the_form_field_limit_is_refused_and_nothing_is_sent(
    owner_client, service, recording_gateway
):
    body = '{"x": "' + "a" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + '"}'

    response = owner_client.post(predict_url(service), {"input": "json", "body": body}, **HX)

    assert response.status_code == 413
    assert "The JSON body is larger than 2.5 MiB; upload it as a file (up to 8 MiB) instead. Nothing was sent." in (
        text_of(response)
    )
    assert recording_gateway.requests == []


@pytest.mark.django_db
def test_a_file_of_exactly_8_mib_is_sent(owner_client, service, recording_gateway):
    data = b"\1" * settings.PREDICTION_UPLOAD_MAX_BYTES
    upload = SimpleUploadedFile("edge.bin", data, content_type="application/octet-stream")

    response = owner_client.post(predict_url(service), {"input": "file", "file": upload, "file_as": "body"}, **HX)

    assert response.status_code == 200
    (request,) = recording_gateway.requests
    assert request["body"] == data
    assert request["headers"]["Content-Type"] == "application/octet-stream"
    assert json.loads(shown_body(response)) == {"received": len(data)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"input": "file", "file_as": "body"}, "file", "Choose a file to send."),
        (
            {"input": "json", "body": "{}", "path": "a b"},
            "path",
            "The path must not contain spaces, control characters or '#'.",
        ),
        ({"input": "json", "body": "{}", "path": "x/../admin"}, "path", "The path must not contain '..' segments."),
        ({"input": "json", "body": "{}", "path": "p" * 201}, "path", "Ensure the path has at most 200 characters."),
    ],
)
def test_bad_fields_are_refused_with_their_name(owner_client, service, recording_gateway, data, field, message):
    response = owner_client.post(predict_url(service), data, **HX)

    assert response.status_code == 400
    assert f'<p data-field="{field}">' in response.content.decode()
    assert message in text_of(response)
    assert recording_gateway.requests == []


@pytest.mark.django_db
def test_the_call_carries_the_console_token_and_the_path(owner_client, owner, service, recording_gateway):
    response = owner_client.post(
        predict_url(service), {"input": "json", "body": SAMPLE_BODY, "path": "/v2/predict?debug=1&name=a b"}, **HX
    )

    assert response.status_code == 400  # a space in the path
    response = owner_client.post(
        predict_url(service), {"input": "json", "body": SAMPLE_BODY, "path": "/v2/predict?debug=1"}, **HX
    )

    assert response.status_code == 200
    (request,) = recording_gateway.requests
    assert request["path"] == f"/v1/infers/{service.id}/v2/predict?debug=1"
    assert request["body"] == SAMPLE_BODY.encode()
    assert request["headers"]["Content-Type"] == "application/json"
    token = console_tokens().get()
    assert token.owner == owner
    assert hashlib.sha256(request["headers"]["X-Auth-Token"].encode()).hexdigest() == token.token_hash


@pytest.mark.django_db
def test_the_console_token_is_kept_in_the_session_and_reissued_when_it_expires(
    owner_client, service, recording_gateway
):
    for _ in range(2):
        owner_client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY}, **HX)
    first, second = (request["headers"]["X-Auth-Token"] for request in recording_gateway.requests)
    assert first == second
    assert console_tokens().count() == 1

    session = owner_client.session
    session[SESSION_KEY] = {**session[SESSION_KEY], "expires_at": time.time() + 5}  # within the renewal margin
    session.save()
    owner_client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    third = recording_gateway.requests[2]["headers"]["X-Auth-Token"]
    assert third != first
    assert console_tokens().count() == 2


@pytest.mark.django_db
def test_an_unreachable_gateway_is_reported(owner_client, service, settings):
    port = free_port()  # nothing listens there
    settings.GATEWAY_URL = f"http://127.0.0.1:{port}"

    response = owner_client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    assert response.status_code == 502
    text = text_of(response)
    assert "Gateway unreachable." in text
    assert f"Could not reach the gateway at http://127.0.0.1:{port}: [Errno 111] Connection refused." in text


@pytest.mark.django_db
def test_binary_answers_are_described_not_dumped(owner_client, service, recording_gateway, monkeypatch):
    from services import prediction

    reply = prediction.GatewayReply(
        status=200,
        reason="OK",
        elapsed_ms=1.0,
        headers=[("Content-Type", "image/png")],
        body=b"\x89PNG\xff\x00",
        is_truncated=False,
    )
    monkeypatch.setattr(prediction, "gateway_call", lambda **kwargs: reply)

    response = owner_client.post(predict_url(service), {"input": "json", "body": "{}"}, **HX)

    assert shown_body(response) == "6 bytes of image/png"


@pytest.mark.django_db
def test_without_htmx_the_whole_tab_is_rendered_with_the_answer(owner_client, service, recording_gateway):
    response = owner_client.post(predict_url(service), {"input": "json", "body": '{"a": 1}', "path": "echo"})

    assert response.status_code == 200
    text = text_of(response)
    assert "<html" in text
    assert 'class="tab active" aria-current="page">Prediction</a>' in text
    assert (
        '<textarea id="id_body" name="body" rows="12" spellcheck="false" class="code-editor">{"a": 1}</textarea>'
        in text
    )
    assert 'value="echo"' in text
    assert shown_status(response) == "200 OK"


@pytest.mark.django_db
def test_without_htmx_bad_input_is_400_with_the_form_kept(owner_client, service, recording_gateway):
    response = owner_client.post(predict_url(service), {"input": "json", "body": "{nope"})

    assert response.status_code == 400
    assert "{nope</textarea>" in text_of(response)
    assert recording_gateway.requests == []


# --- The tab, the owner, other users and methods -----------------------------------


@pytest.mark.django_db
def test_the_prediction_tab_offers_a_prefilled_json_editor_and_a_file_upload(owner_client, service):
    response = owner_client.get(reverse("services:detail", args=[service.id]) + "?tab=prediction")

    assert response.status_code == 200
    content = response.content.decode()
    text = text_of(response)
    assert f'hx-post="{predict_url(service)}" hx-encoding="multipart/form-data"' in content
    assert 'hx-target="#prediction-result"' in content
    assert f'class="code-editor">{SAMPLE_BODY}</textarea>' in text
    assert '<input id="id_file" name="file" type="file">' in content
    assert "(up to 8 MiB)" in text
    assert "Press Send to call the service" in text
    # The Overview's polling is not part of this tab.
    assert "hx-get" not in content


@pytest.mark.django_db
def test_another_user_gets_404_and_nothing_is_sent(client, other_user, service, recording_gateway):
    client.force_login(other_user)

    response = client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    assert response.status_code == 404
    assert recording_gateway.requests == []
    assert not console_tokens().exists()


@pytest.mark.django_db
def test_anonymous_user_is_sent_to_login(client, service, recording_gateway):
    response = client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY})

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))
    assert recording_gateway.requests == []


@pytest.mark.django_db
def test_get_is_405(owner_client, service):
    assert owner_client.get(predict_url(service)).status_code == 405


@pytest.mark.django_db
def test_the_csrf_check_still_applies(client, owner, service, recording_gateway):
    client.handler.enforce_csrf_checks = True
    client.force_login(owner)

    response = client.post(predict_url(service), {"input": "json", "body": SAMPLE_BODY}, **HX)

    assert response.status_code == 403
    assert recording_gateway.requests == []
