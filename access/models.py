from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class AccessToken(models.Model):
    """A user's API token. Only its SHA-256 is stored; the token is shown once."""

    class Kind(models.TextChoices):
        API = "api", "API token"
        # Minted by the console for its own Prediction tab; never listed.
        CONSOLE = "console", "Console session"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.API)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise a token by.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def status_at(self, now: datetime) -> str:
        """ "revoked", "expired" or "active" at the given time."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())


class AppCode(models.Model):
    """A per-service credential for clients without a console account."""

    service = models.ForeignKey("services.Service", on_delete=models.CASCADE, related_name="app_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}…"
