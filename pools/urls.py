from django.urls import path

from pools import views

app_name = "pools"

urlpatterns = [
    path("", views.pool_list, name="list"),
    path("new/", views.pool_create, name="create"),
    path("<int:pool_id>/", views.pool_detail, name="detail"),
    path("<int:pool_id>/edit/", views.pool_edit, name="edit"),
    path("<int:pool_id>/delete/", views.pool_delete, name="delete"),
    path("<int:pool_id>/nodes/new/", views.node_add, name="node_add"),
    path("nodes/<int:node_id>/edit/", views.node_edit, name="node_edit"),
    path("nodes/<int:node_id>/remove/", views.node_remove, name="node_remove"),
]
