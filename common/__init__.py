"""Small pure helpers shared by the console and the gateway (no Django, no Celery)."""
