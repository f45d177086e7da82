from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from pools.models import Flavor, Node, ResourcePool
from services.lifecycle import ai_application_version_check_image
from services.models import AIApplication, AIApplicationVersion
from services.reconcile import nodes_refresh

if TYPE_CHECKING:
    from django.contrib.auth.models import User

FLAVORS = [
    ("cpu.1u1g.free", "CPU: 1 vCPU | 1 GiB (free)", "1", 1024, 0, True),
    ("cpu.2u4g", "CPU: 2 vCPUs | 4 GiB", "2", 4096, 0, False),
    ("cpu.4u8g", "CPU: 4 vCPUs | 8 GiB", "4", 8192, 0, False),
    ("gpu.1p4u16g", "GPU: 1 x GPU | 4 vCPUs | 16 GiB", "4", 16384, 1, False),
]
# (version, image, WebSocket-compliant): 3.0.0 is called over WebSocket.
DEMO_VERSIONS = [
    ("1.0.0", "rts-demo-model:1.0.0", False),
    ("2.0.0", "rts-demo-model:2.0.0", False),
    ("3.0.0", "rts-demo-model:3.0.0", True),
]


class Command(BaseCommand):
    help = "Seed the public pool, flavors, an admin user and the demo AI application. Safe to repeat."

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = Path(settings.BASE_DIR) / ".run" / "admin-password"
        with transaction.atomic():
            admin, password = self._admin(password_file)
            # Overcommitted so that a 2-core machine runs a few dozen small
            # services; an operator's later change of the ratios is kept.
            pool, _ = ResourcePool.objects.get_or_create(
                name="public-cpu",
                defaults={
                    "description": "Public pool on the local Docker engine",
                    "is_public": True,
                    "cpu_overcommit": Decimal("8"),
                    "memory_overcommit": Decimal("4"),
                },
            )
            Node.objects.get_or_create(name="local", defaults={"pool": pool, "docker_host": settings.DOCKER_HOST})
            for order, (code, display, cpus, memory, gpus, is_free) in enumerate(FLAVORS):
                Flavor.objects.update_or_create(
                    code=code,
                    defaults={
                        "display_name": display,
                        "cpus": Decimal(cpus),
                        "memory_mib": memory,
                        "gpus": gpus,
                        "is_free": is_free,
                        "sort_order": order,
                    },
                )
            application, _ = AIApplication.objects.get_or_create(
                owner=admin, name="demo-model", defaults={"description": "Demo model server from examples/"}
            )
            versions = [
                AIApplicationVersion.objects.get_or_create(
                    application=application, version=version, defaults={"image": image, "is_websocket": websocket}
                )[0]
                for version, image, websocket in DEMO_VERSIONS
            ]
        nodes_refresh()
        for version in versions:
            ai_application_version_check_image(version_id=version.id)
        self.stdout.write("")
        self.stdout.write("  Console:      http://127.0.0.1:8000")
        self.stdout.write(f"  Admin login:  admin / {password}")
        self.stdout.write("")

    def _admin(self, password_file: Path) -> tuple[User, str]:
        user_model = get_user_model()
        password = password_file.read_text().strip() if password_file.exists() else ""
        admin = user_model.objects.filter(username="admin").first()
        if admin is None or not password or not admin.check_password(password):
            password = password or secrets.token_urlsafe(12)
            admin = admin or user_model(username="admin", email="admin@localhost", is_staff=True, is_superuser=True)
            admin.set_password(password)
            admin.save()
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        return admin, password
