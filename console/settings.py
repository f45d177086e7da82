from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from common.env import env_bool, env_float, env_int, env_list, env_str
from gateway.collect import CollectionConfig
from gateway.config import GatewayConfig

BASE_DIR = Path(__file__).resolve().parent.parent

# Off unless asked for: a debug page shows posted data, settings and the environment.
DEBUG = env_bool("DEBUG", False)
# `make run` writes a random key to .run/secret-key once and keeps it; compose
# and other deployments pass SECRET_KEY.
SECRET_KEY_FILE = Path(env_str("SECRET_KEY_FILE", str(BASE_DIR / ".run" / "secret-key")))
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY and SECRET_KEY_FILE.is_file():
    SECRET_KEY = SECRET_KEY_FILE.read_text().strip()
if not SECRET_KEY:
    raise ImproperlyConfigured(
        f"SECRET_KEY is not set: set the SECRET_KEY environment variable, or write a key to {SECRET_KEY_FILE} "
        '(e.g. python3 -c "import secrets; print(secrets.token_urlsafe(50))" > .run/secret-key).'
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind a TLS-terminating proxy, cookies are secure and browsers are told to
# keep to HTTPS. Without one (the console on loopback, or plain HTTP inside a
# private network) those settings would break logins, so their deploy checks
# are silenced instead, on purpose.
BEHIND_TLS = env_bool("BEHIND_TLS", False)
if BEHIND_TLS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
else:
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008", "security.W012", "security.W016"]

# The web server's own settings (WEB_BIND, WEB_WORKERS, WEB_THREADS) are read
# by console/gunicorn.conf.py.

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "pools",
    "services",
    "access",
    "api",
    "metering",
    # Throttles logins: the console's, the admin's and POST /api/v1/auth/tokens.
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "console.middleware.RejectUnstorableInput",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a refused login into the lockout answer.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After LOGIN_FAILURE_LIMIT wrong passwords for one account, or from one client
# address, logins are refused for LOGIN_LOCKOUT_SECONDS (429 with Retry-After).
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOGIN_LOCKOUT_SECONDS", 300))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "console.views.login_locked_out"
# Behind a reverse proxy every client would share its address: the client's is
# read from X-Forwarded-For, past this many trusted proxies (console.http.client_address).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if BEHIND_TLS else 0)
AXES_CLIENT_IP_CALLABLE = "console.http.client_address"
AXES_VERBOSE = False

ROOT_URLCONF = "console.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"

# The gateway reads the same variables through the same object.
GATEWAY = GatewayConfig.from_env()

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": GATEWAY.database.name,
        "USER": GATEWAY.database.user,
        "PASSWORD": GATEWAY.database.password,
        "HOST": GATEWAY.database.host,
        "PORT": GATEWAY.database.port,
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "TEST": {"NAME": env_str("DATABASE_TEST_NAME", "test_console")},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

CSRF_FAILURE_VIEW = "console.views.csrf_failure"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "services:list"
LOGOUT_REDIRECT_URL = "login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"docker": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}

# --- Celery -------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "lifecycle"
CELERY_TASK_ROUTES = {
    "services.tasks.reconcile_task": {"queue": "reconcile"},
    "services.tasks.deploys_probe_task": {"queue": "reconcile"},
    "services.tasks.version_check_image_task": {"queue": "reconcile"},
    "access.tasks.access_tokens_purge_task": {"queue": "reconcile"},
    "services.tasks.collected_records_purge_task": {"queue": "reconcile"},
}
# A deploy may wait up to the longest service timeout (120 min); its hard limit
# stays below the broker's visibility timeout so Redis never hands a message
# that is still being worked on to a second worker.
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 130 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 30 * 60}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
RECONCILE_INTERVAL_SECONDS = env_float("RECONCILE_INTERVAL_SECONDS", 2.0)
# A deploy waits this long for its health checks itself, then hands the wait to
# the periodic prober (every DEPLOY_PROBE_INTERVAL_SECONDS) and frees its worker.
DEPLOY_FAST_WAIT_SECONDS = env_float("DEPLOY_FAST_WAIT_SECONDS", 1.0)
DEPLOY_PROBE_INTERVAL_SECONDS = env_float("DEPLOY_PROBE_INTERVAL_SECONDS", 0.5)
COLLECTED_RECORDS_PURGE_SECONDS = env_float("COLLECTED_RECORDS_PURGE_SECONDS", 60.0)
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "services.tasks.reconcile_task",
        "schedule": RECONCILE_INTERVAL_SECONDS,
        "options": {"expires": RECONCILE_INTERVAL_SECONDS * 2},
    },
    "probe-deploys": {
        "task": "services.tasks.deploys_probe_task",
        "schedule": DEPLOY_PROBE_INTERVAL_SECONDS,
        "options": {"expires": DEPLOY_PROBE_INTERVAL_SECONDS * 2},
    },
    "purge-tokens": {
        "task": "access.tasks.access_tokens_purge_task",
        "schedule": 3600.0,
        "options": {"expires": 1800},
    },
    # Data collection's retention: a busy service may pass its record limit by
    # at most a minute's records.
    "purge-collected-records": {
        "task": "services.tasks.collected_records_purge_task",
        "schedule": COLLECTED_RECORDS_PURGE_SECONDS,
        "options": {"expires": COLLECTED_RECORDS_PURGE_SECONDS},
    },
}

# --- Engines and services ------------------------------------------------------
DOCKER_HOST = env_str("DOCKER_HOST", "unix:///var/run/docker.sock")
# Every container this console starts carries this value in its `rts.console`
# label; the reconcile loop only ever touches containers with its own value, so
# two consoles (or a test run) can share one engine.
CONSOLE_ID = env_str("CONSOLE_ID", "console")
# The address the engine publishes container ports on and the workers and
# gateway reach them at.
INSTANCE_HOST = GATEWAY.instance_host
MAX_INSTANCES_PER_VERSION = env_int("MAX_INSTANCES_PER_VERSION", 128)
MAX_SERVICES_PER_USER = env_int("MAX_SERVICES_PER_USER", 20)
# Instances of all a user's services together (staff may change it per user).
MAX_INSTANCES_PER_USER = env_int("MAX_INSTANCES_PER_USER", 200)
# Each user's resource quota unless staff set another (pools.UserQuota).
QUOTA_VCPUS = env_int("QUOTA_VCPUS", 64)
QUOTA_GPUS = env_int("QUOTA_GPUS", 4)
# Version rows (gray launch) in one service; a request with more is refused before any is read.
MAX_CONFIGS_PER_SERVICE = env_int("MAX_CONFIGS_PER_SERVICE", 10)
# What one instance takes from its node beyond its flavor (the container's
# init, logging and the engine's own bookkeeping), in pool accounting.
INSTANCE_OVERHEAD_CPUS = env_float("INSTANCE_OVERHEAD_CPUS", 0.05)
INSTANCE_OVERHEAD_MEMORY_MIB = env_int("INSTANCE_OVERHEAD_MEMORY_MIB", 32)
if INSTANCE_OVERHEAD_CPUS < 0 or INSTANCE_OVERHEAD_MEMORY_MIB < 0:
    raise ImproperlyConfigured("INSTANCE_OVERHEAD_CPUS and INSTANCE_OVERHEAD_MEMORY_MIB must not be negative")
SERVICE_TIMEOUT_DEFAULT_MINUTES = 20
SERVICE_TIMEOUT_MIN_MINUTES = env_int("SERVICE_TIMEOUT_MIN_MINUTES", 3)
SERVICE_TIMEOUT_MAX_MINUTES = 120
# Tests shorten the deploy timeout below the 3-minute floor users may pick.
SERVICE_TIMEOUT_SCALE = env_float("SERVICE_TIMEOUT_SCALE", 1.0)
HEALTH_PROBE_TIMEOUT_SECONDS = env_float("HEALTH_PROBE_TIMEOUT_SECONDS", 1.0)
# Short, and renewed every third of it while the work runs: work whose worker
# died is taken up again by the reconcile loop within a few seconds.
TASK_LEASE_SECONDS = env_float("TASK_LEASE_SECONDS", 3.0)
CONTAINER_LOG_TAIL_LINES = env_int("CONTAINER_LOG_TAIL_LINES", 50)
# What every model container runs under (see README, Security).
# "allow": model containers may reach the outside world; "deny": nothing outside their service's network.
CONTAINER_EGRESS = env_str("CONTAINER_EGRESS", "allow")
if CONTAINER_EGRESS not in ("allow", "deny"):
    raise ImproperlyConfigured(f"CONTAINER_EGRESS must be allow or deny, got {CONTAINER_EGRESS!r}")
CONTAINER_PIDS_LIMIT = env_int("CONTAINER_PIDS_LIMIT", 256)
CONTAINER_CAPABILITIES = env_list("CONTAINER_CAPABILITIES", ["CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE"])
CONTAINER_NO_NEW_PRIVILEGES = env_bool("CONTAINER_NO_NEW_PRIVILEGES", True)
CONTAINER_TMP_MIB = env_int("CONTAINER_TMP_MIB", 64)
CONTAINER_LOG_MAX_SIZE_MIB = env_int("CONTAINER_LOG_MAX_SIZE_MIB", 10)
CONTAINER_LOG_MAX_FILES = env_int("CONTAINER_LOG_MAX_FILES", 3)

# --- Gateway --------------------------------------------------------------------
# GATEWAY (above) holds the gateway's own settings (gateway/config.py).
# The address users call, shown in the Usage Guide; the console calls the same.
GATEWAY_URL = env_str("GATEWAY_URL", GATEWAY.local_url)
GATEWAY_CALL_TIMEOUT_SECONDS = GATEWAY.call_timeout_seconds
# Changes reach the gateway as they commit (LISTEN/NOTIFY): this bounds how
# long the console's retries allow for one to arrive, not a reload period.
GATEWAY_REFRESH_SECONDS = env_float("GATEWAY_REFRESH_SECONDS", 0.5)
GATEWAY_FULL_RELOAD_SECONDS = GATEWAY.full_reload_seconds
# A deploy waits this long for every live gateway process to route the
# service before marking it Running (services.routing_sync).
ROUTING_SYNC_TIMEOUT_SECONDS = env_float("ROUTING_SYNC_TIMEOUT_SECONDS", 2.0)
# A live update removes the containers of the versions it replaces once no
# gateway process has a call in flight that could reach them, or after this
# long (a call in flight is cut then): by default the gateway's call timeout.
UPDATE_DRAIN_TIMEOUT_SECONDS = env_float("UPDATE_DRAIN_TIMEOUT_SECONDS", GATEWAY.call_timeout_seconds + 5)
ACCESS_TOKEN_DEFAULT_DAYS = 90
ACCESS_TOKEN_MAX_DAYS = 365
# Live API tokens per user; creating one more revokes the oldest.
ACCESS_TOKEN_MAX_LIVE = env_int("ACCESS_TOKEN_MAX_LIVE", 20)
# Expired and revoked API tokens stay listed this long, then the beat schedule deletes them.
ACCESS_TOKEN_KEEP_DAYS = env_int("ACCESS_TOKEN_KEEP_DAYS", 30)
CONSOLE_TOKEN_SECONDS = env_int("CONSOLE_TOKEN_SECONDS", 3600)
PREDICTION_UPLOAD_MAX_BYTES = 8 * 1024 * 1024
# The Prediction tab's call holds a web worker thread: it waits this long at most.
PREDICTION_TIMEOUT_SECONDS = env_float("PREDICTION_TIMEOUT_SECONDS", 30.0)
# Data collection: the gateway keeps at most this much of each body of a
# sampled call (it reads the same variables through the same object).
DATA_COLLECTION = CollectionConfig.from_env()
DATA_COLLECTION_BODY_MAX_BYTES = DATA_COLLECTION.body_max_bytes
