"""Registering AI application versions, checking their image on the real
engine, and deleting applications."""

import html
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from pools.models import Node, ResourcePool
from services import lifecycle
from services.choices import VersionStatus
from services.models import AIApplication, AIApplicationVersion, Service, ServiceVersionConfig
from tests.factories import DEMO_IMAGE_V1, make_version

pytestmark = pytest.mark.django_db


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def stored() -> tuple[int, int]:
    return AIApplication.objects.count(), AIApplicationVersion.objects.count()


@pytest.fixture
def form() -> dict:
    return {
        "application_name": "demo-model",
        "description": "a demo",
        "version": "1.0.0",
        "image": DEMO_IMAGE_V1,
        "container_port": "8080",
        "health_path": "/health",
        "predict_path": "/predict",
    }


def post_register(client, form: dict, **changes):
    return client.post(reverse("services:application_register"), {**form, **changes})


# --- Registering through the view --------------------------------------------------------


def test_register_stores_a_checking_version_and_queues_the_image_check(
    owner_client, owner, form, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_register(owner_client, form, container_port="9000", websocket="on")

    assert response.status_code == 302
    assert response.url == reverse("services:applications")
    version = AIApplicationVersion.objects.select_related("application").get()
    assert version.application.owner == owner
    assert (version.application.name, version.application.description) == ("demo-model", "a demo")
    assert (version.version, version.image, version.container_port) == ("1.0.0", DEMO_IMAGE_V1, 9000)
    assert (version.health_path, version.predict_path, version.is_websocket) == ("/health", "/predict", True)
    assert version.status == VersionStatus.CHECKING
    assert len(callbacks) == 1


def test_register_uses_defaults_for_empty_port_and_paths(owner_client, form):
    response = post_register(owner_client, form, container_port="", health_path="", predict_path="")

    assert response.status_code == 302
    version = AIApplicationVersion.objects.get()
    assert (version.container_port, version.health_path, version.predict_path) == (8080, "/health", "/predict")


def test_register_adds_a_new_version_to_the_existing_application(owner_client, owner, form, demo_version):
    response = post_register(owner_client, form, version="2.0.0")

    assert response.status_code == 302
    assert AIApplication.objects.count() == 1
    assert sorted(demo_version.application.versions.values_list("version", flat=True)) == ["1.0.0", "2.0.0"]


APP_NAME_RULE = (
    "AI application name must start with a letter, contain only letters, digits, '-' and '_', "
    "and be at most 64 characters."
)
PATH_RULE = "must start with '/' and be a URL path of at most 200 characters."
IMAGE_RULE = "Container image must be an image reference such as my-model:1.0.0."


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("application_name", "", "AI application name is required."),
        ("application_name", "1model", APP_NAME_RULE),
        ("application_name", "my model", APP_NAME_RULE),
        ("application_name", "m" * 65, APP_NAME_RULE),
        ("description", "d" * 101, "Description must be at most 100 characters."),
        ("version", "", "Version is required."),
        ("version", "1.0", "Version must look like 1.0.0 (three numbers separated by dots)."),
        ("version", "v1.0.0", "Version must look like 1.0.0 (three numbers separated by dots)."),
        ("image", "", "Container image is required."),
        ("image", "My-Model:1.0", IMAGE_RULE),
        ("image", "my model:1.0", IMAGE_RULE),
        ("image", "model:", IMAGE_RULE),
        ("container_port", "0", "Container port must be between 1 and 65535."),
        ("container_port", "65536", "Container port must be between 1 and 65535."),
        ("container_port", "http", "Container port must be a whole number."),
        ("health_path", "health", f"Health-check path {PATH_RULE}"),
        ("health_path", "/" + "h" * 200, f"Health-check path {PATH_RULE}"),
        ("predict_path", "/pre dict", f"Predict path {PATH_RULE}"),
    ],
)
def test_register_rejects_bad_value(owner_client, form, field, value, message):
    before = stored()

    response = post_register(owner_client, form, **{field: value})

    assert response.status_code == 400
    assert message in response.context["errors"][field]
    assert message in page_text(response)
    assert stored() == before


def test_refused_register_keeps_the_entered_values(owner_client, form):
    response = post_register(owner_client, form, version="1.0")

    text = page_text(response)
    assert 'name="application_name" value="demo-model"' in text
    assert f'name="image" value="{DEMO_IMAGE_V1}"' in text


def test_register_refuses_a_version_the_application_already_has(owner_client, form, demo_version):
    before = stored()

    response = post_register(owner_client, form)

    assert response.status_code == 400
    assert "demo-model already has a version 1.0.0." in response.context["errors"]["version"]
    assert "demo-model already has a version 1.0.0." in page_text(response)
    assert stored() == before


def test_register_allows_a_version_another_user_already_has(owner_client, form, other_user):
    make_version(other_user)

    response = post_register(owner_client, form)

    assert response.status_code == 302
    assert AIApplicationVersion.objects.count() == 2


def test_register_page_prefills_the_application_to_add_a_version_to(owner_client):
    response = owner_client.get(reverse("services:application_register"), {"application": "demo-model"})

    assert response.status_code == 200
    assert 'name="application_name" value="demo-model"' in page_text(response)


def test_register_page_shows_the_version_format_before_any_error(owner_client):
    response = owner_client.get(reverse("services:application_register"))

    text = page_text(response)
    assert '<p class="help" id="version-help">Three numbers, e.g. 1.0.0.</p>' in text
    assert 'aria-describedby="version-help"' in text
    assert "field-error" not in text


def add_version_url(name: str = "demo-model") -> str:
    return f"{reverse('services:application_register')}?application={name}"


def test_add_version_shows_the_applications_description_and_versions(owner_client, demo_version):
    AIApplication.objects.filter(id=demo_version.application_id).update(description="Classifies inputs")

    response = owner_client.get(add_version_url())

    text = page_text(response)
    assert "Add a version to demo-model" in text
    assert '<p class="static-value" id="application-description">Classifies inputs</p>' in text
    assert "Three numbers, e.g. 1.0.0. demo-model has 1.0.0." in text
    # Shown, not offered as an input whose value would be dropped.
    assert 'name="description"' not in text
    assert 'name="application_name"' not in text
    assert f'action="{add_version_url()}"' in text


def test_add_version_keeps_the_applications_name_and_description(owner_client, form, demo_version):
    AIApplication.objects.filter(id=demo_version.application_id).update(description="Classifies inputs")

    response = owner_client.post(
        add_version_url(), {**form, "application_name": "renamed", "description": "changed", "version": "1.1.0"}
    )

    assert response.status_code == 302
    assert list(AIApplication.objects.values_list("name", "description")) == [("demo-model", "Classifies inputs")]
    assert sorted(AIApplicationVersion.objects.values_list("version", flat=True)) == ["1.0.0", "1.1.0"]


def test_refused_add_version_stays_on_the_same_application(owner_client, form, demo_version):
    response = owner_client.post(add_version_url(), {**form, "version": "1.0.0"})

    assert response.status_code == 400
    text = page_text(response)
    assert "Add a version to demo-model" in text
    assert "demo-model already has a version 1.0.0." in text
    assert f'name="image" value="{DEMO_IMAGE_V1}"' in text


def test_add_version_to_another_users_application_shows_nothing_of_it(owner_client, other_user):
    make_version(other_user)
    AIApplication.objects.filter(owner=other_user).update(description="someone else's secret")

    response = owner_client.get(add_version_url())

    text = page_text(response)
    assert response.status_code == 200
    assert "someone else's secret" not in text
    assert "Register an AI application version" in text
    assert 'name="application_name" value="demo-model"' in text


# --- The image check on the real engine --------------------------------------------------


def test_version_whose_image_is_on_the_engine_becomes_normal(engine, pool, owner):
    version = make_version(owner, image=DEMO_IMAGE_V1, status=VersionStatus.CHECKING)

    assert lifecycle.ai_application_version_check_image(version_id=version.id) == VersionStatus.NORMAL

    version.refresh_from_db()
    assert (version.status, version.status_reason) == (VersionStatus.NORMAL, "")


def test_version_whose_image_is_missing_becomes_failed_with_the_reason(engine, pool, owner):
    version = make_version(owner, image="rts-no-such-image:9.9.9", status=VersionStatus.CHECKING)

    assert lifecycle.ai_application_version_check_image(version_id=version.id) == VersionStatus.FAILED

    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert version.status_reason == "image rts-no-such-image:9.9.9 not found on the engine"


def test_image_check_is_safe_to_repeat(engine, pool, owner):
    version = make_version(owner, image=DEMO_IMAGE_V1, status=VersionStatus.CHECKING)

    lifecycle.ai_application_version_check_image(version_id=version.id)
    lifecycle.ai_application_version_check_image(version_id=version.id)

    version.refresh_from_db()
    assert version.status == VersionStatus.NORMAL


def test_image_check_without_engines_fails_with_the_reason(db, owner):
    version = make_version(owner, status=VersionStatus.CHECKING)

    lifecycle.ai_application_version_check_image(version_id=version.id)

    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert version.status_reason == "no engine is registered to check the image on"


def test_image_check_with_no_engine_answering_keeps_checking_with_the_reason(db, owner):
    down = ResourcePool.objects.create(name="down", is_public=True)
    Node.objects.create(pool=down, name="down-1", docker_host="tcp://127.0.0.1:1", is_reachable=True)
    version = make_version(owner, status=VersionStatus.CHECKING)

    assert lifecycle.ai_application_version_check_image(version_id=version.id) == VersionStatus.CHECKING

    version.refresh_from_db()
    assert version.status == VersionStatus.CHECKING
    assert version.status_reason.startswith("no engine answered yet, checking again: ")
    assert "tcp://127.0.0.1:1" in version.status_reason


def test_image_check_finds_the_image_on_any_engine(engine, pool, owner):
    Node.objects.create(pool=pool, name="down-1", docker_host="tcp://127.0.0.1:1", is_reachable=True)
    version = make_version(owner, image=DEMO_IMAGE_V1, status=VersionStatus.CHECKING)

    assert lifecycle.ai_application_version_check_image(version_id=version.id) == VersionStatus.NORMAL


def test_registered_version_becomes_normal_and_is_offered_by_the_deploy_wizard(
    engine, pool, flavors, owner_client, form, django_capture_on_commit_callbacks
):
    # Run the enqueue callback's work directly instead of sending it to Celery.
    with django_capture_on_commit_callbacks(execute=False):
        post_register(owner_client, form)
    version = AIApplicationVersion.objects.get()
    assert _deploy_select_values(owner_client) == set()

    lifecycle.ai_application_version_check_image(version_id=version.id)

    assert _deploy_select_values(owner_client) == {str(version.id)}


class _Options(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values: set[str] = set()
        self._in_select = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select" and attrs.get("name") == "app_version":
            self._in_select = True
        elif tag == "option" and self._in_select and attrs.get("value"):
            self.values.add(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "select":
            self._in_select = False


def _deploy_select_values(client) -> set[str]:
    parser = _Options()
    parser.feed(client.get(reverse("services:deploy")).content.decode())
    return parser.values


def test_deploy_wizard_offers_only_normal_versions(owner_client, owner, other_user, pool, flavors):
    normal = make_version(owner, version="1.0.0")
    make_version(owner, version="2.0.0", status=VersionStatus.CHECKING)
    make_version(owner, version="3.0.0", status=VersionStatus.FAILED)
    make_version(other_user, version="1.0.0")

    assert _deploy_select_values(owner_client) == {str(normal.id)}


# --- The applications list and deleting -------------------------------------------------


def test_applications_list_shows_each_version_with_its_status_and_reason(owner_client, owner):
    make_version(owner, version="1.0.0")
    failed = make_version(
        owner, version="2.0.0", status=VersionStatus.FAILED, status_reason="image x not found on the engine"
    )

    response = owner_client.get(reverse("services:applications"))

    text = page_text(response)
    assert "Normal" in text and "Failed" in text
    assert "image x not found on the engine" in text
    assert reverse("services:version_recheck", args=[failed.id]) in text
    assert "hx-get" not in text


def test_applications_list_polls_while_a_version_is_checking(owner_client, owner):
    make_version(owner, status=VersionStatus.CHECKING)

    page = owner_client.get(reverse("services:applications"))
    fragment = owner_client.get(reverse("services:applications"), HTTP_HX_REQUEST="true")

    assert f'hx-get="{reverse("services:applications")}"' in page.content.decode()
    assert fragment.content.decode().lstrip().startswith('<div id="application-table"')
    assert "<html" not in fragment.content.decode()


def test_deleting_an_application_used_by_a_service_is_refused(owner_client, owner, pool, flavors, demo_version):
    service = Service.objects.create(owner=owner, name="svc-one", pool=pool)
    ServiceVersionConfig.objects.create(service=service, app_version=demo_version, flavor=flavors["small"])

    response = owner_client.post(
        reverse("services:application_delete", args=[demo_version.application_id]), follow=True
    )

    assert "demo-model is used by a service; delete the service first." in page_text(response)
    assert AIApplication.objects.filter(id=demo_version.application_id).exists()
    assert AIApplicationVersion.objects.filter(id=demo_version.id).exists()
