"""/models: registering, listing, showing and deleting AI application
versions, with the register form's rules and messages."""

import pytest

from services.choices import VersionStatus
from services.models import AIApplication, AIApplicationVersion, Service
from services.validation import RequestInvalid, parse_version_request
from tests.factories import DEMO_IMAGE_V1, make_service, make_version

pytestmark = pytest.mark.django_db

BODY = {
    "model_name": "demo-model",
    "model_version": "1.0.0",
    "description": "a demo",
    "image": DEMO_IMAGE_V1,
    "port": 9000,
    "health_path": "/healthz",
    "predict_path": "/infer",
    "websocket": True,
}
# The register form's fields for BODY.
FORM = {
    "application_name": "demo-model",
    "version": "1.0.0",
    "description": "a demo",
    "image": DEMO_IMAGE_V1,
    "container_port": "9000",
    "health_path": "/healthz",
    "predict_path": "/infer",
    "websocket": True,
}


def stored() -> tuple[int, int]:
    return AIApplication.objects.count(), AIApplicationVersion.objects.count()


# --- POST /models --------------------------------------------------------------------------


def test_create_model_stores_a_checking_version_and_queues_the_image_check(
    api, owner, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/models", BODY)

    assert response.status_code == 201
    version = AIApplicationVersion.objects.select_related("application").get()
    assert response.json() == {"model_id": version.id}
    assert (version.application.owner, version.application.name, version.application.description) == (
        owner,
        "demo-model",
        "a demo",
    )
    assert (version.version, version.image, version.container_port) == ("1.0.0", DEMO_IMAGE_V1, 9000)
    assert (version.health_path, version.predict_path, version.is_websocket) == ("/healthz", "/infer", True)
    assert version.status == VersionStatus.CHECKING
    assert len(callbacks) == 1


def test_create_model_applies_the_form_defaults(api):
    response = api.post("/models", {"model_name": "m", "model_version": "0.1.0", "image": DEMO_IMAGE_V1})

    assert response.status_code == 201
    version = AIApplicationVersion.objects.get()
    assert (version.container_port, version.health_path, version.predict_path, version.is_websocket) == (
        8080,
        "/health",
        "/predict",
        False,
    )


def test_create_model_adds_a_version_to_an_existing_application(api, owner):
    make_version(owner, application_name="demo-model", version="0.9.0")

    assert api.post("/models", BODY).status_code == 201

    assert stored() == (1, 2)


@pytest.mark.parametrize(
    ("body_changes", "form_changes", "api_field", "form_field"),
    [
        ({"model_name": ""}, {"application_name": ""}, "model_name", "application_name"),
        ({"model_name": "1-model"}, {"application_name": "1-model"}, "model_name", "application_name"),
        ({"model_version": None}, {"version": None}, "model_version", "version"),
        ({"model_version": "1.0"}, {"version": "1.0"}, "model_version", "version"),
        ({"description": "d" * 101}, {"description": "d" * 101}, "description", "description"),
        ({"image": ""}, {"image": ""}, "image", "image"),
        ({"image": "Not An Image"}, {"image": "Not An Image"}, "image", "image"),
        ({"port": 0}, {"container_port": "0"}, "port", "container_port"),
        ({"port": 70000}, {"container_port": "70000"}, "port", "container_port"),
        ({"port": "http"}, {"container_port": "http"}, "port", "container_port"),
        ({"port": True}, {"container_port": True}, "port", "container_port"),
        ({"health_path": "health"}, {"health_path": "health"}, "health_path", "health_path"),
        ({"predict_path": "/a b"}, {"predict_path": "/a b"}, "predict_path", "predict_path"),
    ],
)
def test_create_model_rejects_what_the_register_form_rejects_naming_the_api_field(
    api, owner, body_changes, form_changes, api_field, form_field
):
    with pytest.raises(RequestInvalid) as form_error:
        parse_version_request(owner=owner, data={**FORM, **form_changes})

    response = api.post("/models", {**BODY, **body_changes})

    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "RTS.4000"
    assert body["errors"] == {api_field: form_error.value.errors[form_field]}
    assert api_field in body["error_msg"]
    assert stored() == (0, 0)


def test_create_model_refuses_a_version_number_taken_naming_model_version(api, owner):
    make_version(owner, application_name="demo-model", version="1.0.0")

    response = api.post("/models", BODY)

    assert response.status_code == 400
    assert response.json()["errors"] == {"model_version": ["demo-model already has a version 1.0.0."]}
    assert stored() == (1, 1)


def test_create_model_reports_every_bad_field_at_once(api):
    response = api.post("/models", {"port": -1})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"model_name", "model_version", "image", "port"}


def test_another_user_may_register_the_same_model_name_and_version(api, other_user):
    make_version(other_user, application_name="demo-model", version="1.0.0")

    assert api.post("/models", BODY).status_code == 201


@pytest.mark.parametrize("raw", ["{", '"a string"', "null"])
def test_create_model_with_a_body_that_is_not_a_json_object_is_400(api, raw):
    response = api.post("/models", raw)

    assert response.status_code == 400
    assert response.json()["error_code"] == "RTS.4001"
    assert stored() == (0, 0)


# --- GET /models and /models/<id> ----------------------------------------------------------


def test_list_models_shows_the_owners_versions_newest_first(api, owner, other_user):
    old = make_version(owner, application_name="alpha", version="1.0.0")
    new = make_version(
        owner, application_name="beta", version="2.0.0", status=VersionStatus.FAILED, status_reason="image not found"
    )
    make_version(other_user, application_name="theirs")

    response = api.get("/models")

    assert response.status_code == 200
    body = response.json()
    assert body["total_count"] == 2
    assert [m["model_id"] for m in body["models"]] == [new.id, old.id]
    assert body["models"][0] == {
        "model_id": new.id,
        "model_name": "beta",
        "model_version": "2.0.0",
        "model_status": "failed",
        "description": "",
        "image": DEMO_IMAGE_V1,
        "port": 8080,
        "health_path": "/health",
        "predict_path": "/predict",
        "websocket": False,
        "status_reason": "image not found",
        "create_at": int(new.created_at.timestamp() * 1000),
    }


def test_list_models_takes_a_fixed_number_of_queries(api, owner, django_assert_num_queries):
    for n in range(5):
        make_version(owner, application_name=f"app{n}")

    # token lookup + versions with their application
    with django_assert_num_queries(2):
        assert api.get("/models").json()["total_count"] == 5


@pytest.mark.parametrize("status", list(VersionStatus.values))
def test_show_model_reports_its_status(api, owner, status):
    version = make_version(owner, status=status, container_port=9000, is_websocket=True)

    response = api.get(f"/models/{version.id}")

    assert response.status_code == 200
    body = response.json()
    assert (body["model_id"], body["model_name"], body["model_version"]) == (version.id, "demo-model", "1.0.0")
    assert (body["model_status"], body["port"], body["websocket"]) == (status, 9000, True)


@pytest.mark.parametrize("path", ["/models/999999", "/models/abc", "/models/99999999999999999999999"])
def test_show_an_unknown_model_is_404(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response.json()["error_code"] == "RTS.4040"


def test_show_another_users_model_is_404(api, other_user):
    theirs = make_version(other_user)

    assert api.get(f"/models/{theirs.id}").status_code == 404


# --- DELETE /models/<id> -------------------------------------------------------------------


def test_delete_model_removes_that_version_only(api, owner):
    keep = make_version(owner, version="1.0.0")
    drop = make_version(owner, version="2.0.0")

    response = api.delete(f"/models/{drop.id}")

    assert response.status_code == 204
    assert response.content == b""
    assert list(AIApplicationVersion.objects.all()) == [keep]


def test_delete_the_last_version_keeps_its_application(api, owner):
    version = make_version(owner)

    assert api.delete(f"/models/{version.id}").status_code == 204

    assert stored() == (1, 0)


def test_delete_a_model_used_by_a_service_is_409(api, owner, pool, flavors):
    version = make_version(owner)
    make_service(owner, pool, version=version, flavor=flavors["small"])

    response = api.delete(f"/models/{version.id}")

    assert response.status_code == 409
    assert response.json() == {
        "error_code": "RTS.4090",
        "error_msg": "demo-model 1.0.0 is used by a service; delete the service first.",
    }
    assert stored() == (1, 1)
    assert Service.objects.count() == 1


def test_delete_another_users_model_is_404_and_keeps_it(api, other_user):
    theirs = make_version(other_user)

    assert api.delete(f"/models/{theirs.id}").status_code == 404

    assert AIApplicationVersion.objects.filter(id=theirs.id).exists()
