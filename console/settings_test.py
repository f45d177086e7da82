"""Settings for the test suite: same stack, isolated from a running console.

Test containers carry their own console label, so neither a `make run`
console on the same engine nor the tests touch each other's containers, and the
broker uses its own Redis database.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-key-never-used-outside-the-test-suite")
os.environ.setdefault("CONSOLE_ID", "test")
# Deploys run inline in most tests: they wait for health themselves, as long as
# it takes; tests of the hand-over to the prober set it short.
os.environ.setdefault("DEPLOY_FAST_WAIT_SECONDS", "600")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("RECONCILE_INTERVAL_SECONDS", "1")

from console.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
