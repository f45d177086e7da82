"""One way to wait in tests: poll a check until it holds, or fail saying what
was awaited. A timeout here is a bound on a hung test, not a claim about speed:
keep it generous, and assert speed-independent properties instead."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "the condition never held",
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check` every `interval` seconds until it returns a truthy value, and
    return that value; after `timeout` seconds fail with `message` (a callable is
    called then, so it can describe the last state seen). Exceptions of the
    `ignoring` types count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s)")
        time.sleep(interval)


def wait_for_status(service_id, statuses, timeout: float = 30.0):
    """Poll the database until the service reaches one of `statuses` and return
    it; `None` among the statuses waits for the row to be gone (and returns None)."""
    from services.models import Service

    if isinstance(statuses, str):
        statuses = {statuses}
    last = None

    def reached():
        nonlocal last
        last = Service.objects.filter(id=service_id).first()
        return (last,) if (last and last.status) in statuses else None

    return eventually(
        reached,
        timeout=timeout,
        message=lambda: f"service is {last and last.status}, wanted {statuses}",
    )[0]
