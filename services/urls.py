from django.urls import path

from services import views

app_name = "services"

urlpatterns = [
    path("", views.service_list, name="list"),
    path("services/deploy/", views.service_deploy, name="deploy"),
    path("services/deploy/flavors/", views.service_deploy_flavors, name="deploy_flavors"),
    path("services/deploy/estimate/", views.service_deploy_estimate, name="deploy_estimate"),
    path("services/<uuid:service_id>/", views.service_detail, name="detail"),
    path("services/<uuid:service_id>/start/", views.service_start, name="start"),
    path("services/<uuid:service_id>/stop/", views.service_stop, name="stop"),
    path("services/<uuid:service_id>/delete/", views.service_delete, name="delete"),
    path("services/<uuid:service_id>/auto-stop/", views.service_auto_stop, name="auto_stop"),
    path("services/<uuid:service_id>/predict/", views.service_predict, name="predict"),
    path("services/<uuid:service_id>/update/", views.service_update, name="update"),
    path("services/<uuid:service_id>/collection/", views.service_collection_update, name="collection_update"),
    path(
        "services/<uuid:service_id>/collection/records.jsonl",
        views.service_collection_export,
        name="collection_export",
    ),
    path("services/<uuid:service_id>/app-codes/", views.service_app_code_create, name="app_code_create"),
    path(
        "services/<uuid:service_id>/app-codes/<int:code_id>/revoke/",
        views.service_app_code_revoke,
        name="app_code_revoke",
    ),
    path("applications/", views.application_list, name="applications"),
    path("applications/register/", views.application_register, name="application_register"),
    path("applications/versions/<int:version_id>/recheck/", views.application_version_recheck, name="version_recheck"),
    path("applications/<int:application_id>/delete/", views.application_delete, name="application_delete"),
]
