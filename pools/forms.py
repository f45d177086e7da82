"""Operators' forms for the Django admin."""

from typing import Any

from django import forms

from pools.actions import pool_owner_problems
from pools.models import Flavor, Node, ResourcePool


class ResourcePoolForm(forms.ModelForm):
    """Whether a pool is public follows from its owner, so the form asks only
    for the owner: a checkbox beside it could only agree or be wrong (the
    database refuses a public pool with an owner, `pool_public_xor_owner`)."""

    class Meta:
        model = ResourcePool
        fields = ["name", "description", "owner"]
        labels = {"owner": "Dedicated to"}
        help_texts = {
            "owner": "Leave empty for a public pool, offered to every user; "
            "choose a user to offer the pool to them alone."
        }

    def clean(self) -> dict[str, Any] | None:
        cleaned_data = super().clean()
        owner = self.cleaned_data.get("owner")
        if owner is not None and self.instance.pk:
            # The rules of the pool pages' form (pools.actions.pool_update); the
            # instance still holds the pool as stored.
            for problem in pool_owner_problems(self.instance, owner):
                self.add_error("owner", problem)
        self.instance.is_public = owner is None
        return cleaned_data


class NodeInlineForm(forms.ModelForm):
    """A node as one row of its pool's page: short inputs, so that the row with
    the engine's capacity and state fits a 1280-pixel screen."""

    class Meta:
        model = Node
        fields = ["name", "docker_host", "is_enabled", "gpu_count"]
        labels = {"is_enabled": "Enabled", "gpu_count": "GPUs"}
        widgets = {
            "name": forms.TextInput(attrs={"size": 16}),
            "docker_host": forms.TextInput(attrs={"size": 26}),
            "gpu_count": forms.NumberInput(attrs={"min": 0, "style": "width: 4em"}),
        }


class FlavorForm(forms.ModelForm):
    class Meta:
        model = Flavor
        fields = ["code", "display_name", "cpus", "memory_mib", "gpus", "is_free", "sort_order"]
        labels = {"cpus": "vCPUs", "memory_mib": "Memory (MiB)", "gpus": "GPUs", "is_free": "Free"}
