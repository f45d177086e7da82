"""gunicorn settings for the web process: `gunicorn -c console/gunicorn.conf.py console.wsgi`.

Threads, not processes, carry most of the concurrency: a page mostly waits on
PostgreSQL, and the Prediction tab waits on the gateway (at most
PREDICTION_TIMEOUT_SECONDS).
"""

from common.env import env_int, env_str

bind = env_str("WEB_BIND", f"127.0.0.1:{env_int('PORT', 8000)}")
workers = env_int("WEB_WORKERS", 2)
threads = env_int("WEB_THREADS", 8)
worker_class = "gthread"
# Longer than the Prediction tab's cap, so a slow model never gets a worker killed.
timeout = env_int("WEB_TIMEOUT_SECONDS", 60)
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
