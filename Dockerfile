# Image of the console itself (web, workers, beat all run from it).
# Used by compose.yaml; model images are built separately on the host with
# `scripts/bootstrap.sh docker images` (they need no registry).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

COPY . /app

# Static files are served by WhiteNoise from STATIC_ROOT (/app/staticfiles).
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0 \
    && mkdir -p /app/.run

EXPOSE 8000
CMD ["gunicorn", "-c", "console/gunicorn.conf.py", "console.wsgi"]
