"""The Usage page's filters, read from its URL (the page and its CSV share them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from metering.selectors import DEFAULT_RANGE_DAYS, MAX_RANGE_DAYS, UsageQuery

FIELD_LABELS = {"from": "From", "to": "To", "user": "User"}
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Far enough either way for any real report, and far from date.min and date.max.
EARLIEST_YEAR, LATEST_YEAR = 2000, 2999


class UsageQueryInvalid(Exception):
    """Bad filters: messages per field (`from`, `to`, `user`), each naming its field."""

    def __init__(self, errors: dict[str, list[str]], data: dict[str, str]):
        super().__init__("; ".join(" ".join(messages) for messages in errors.values()))
        self.errors = errors
        self.data = data


def usage_data_from_params(params: Mapping[str, str], *, today: date) -> dict[str, str]:
    """The filters as the form shows them, defaults filled in: the last 30 days up to today."""
    return {
        "from": params.get("from", "").strip() or (today - timedelta(days=DEFAULT_RANGE_DAYS - 1)).isoformat(),
        "to": params.get("to", "").strip() or today.isoformat(),
        "user": params.get("user", "").strip(),
    }


def usage_data_of(query: UsageQuery, *, is_staff: bool) -> dict[str, str]:
    """The filters of a valid query as the form shows them (and the CSV link repeats them)."""
    return {
        "from": query.date_from.isoformat(),
        "to": query.date_to.isoformat(),
        "user": str(query.owner_id) if is_staff and query.owner_id is not None else "",
    }


def _parse_date(name: str, value: str, errors: dict[str, list[str]]) -> date | None:
    label = FIELD_LABELS[name]
    if not DATE_RE.fullmatch(value):
        errors[name] = [f"{label}: “{value[:20]}” is not a date; write it as YYYY-MM-DD, e.g. 2026-12-01."]
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        errors[name] = [f"{label}: {value} is not a day of the calendar."]
        return None
    if not EARLIEST_YEAR <= day.year <= LATEST_YEAR:
        errors[name] = [f"{label}: {value} is outside the years {EARLIEST_YEAR} to {LATEST_YEAR}."]
        return None
    return day


def usage_query_parse(params: Mapping[str, str], *, user: User, today: date) -> UsageQuery:
    """Whose usage and which days the URL asks for. An ordinary user's usage is
    always their own, whatever `user` says; staff see every user's unless
    `user` names one. Raises UsageQueryInvalid, with a message per bad field."""
    data = usage_data_from_params(params, today=today)
    errors: dict[str, list[str]] = {}
    date_from = _parse_date("from", data["from"], errors)
    date_to = _parse_date("to", data["to"], errors)
    if date_from and date_to:
        if date_to < date_from:
            errors["to"] = [f"To ({date_to}) is before From ({date_from}); pick a later day."]
        elif (date_to - date_from).days + 1 > MAX_RANGE_DAYS:
            errors["from"] = [
                f"From: the range may cover at most {MAX_RANGE_DAYS} days; "
                f"{date_from} to {date_to} covers {(date_to - date_from).days + 1}."
            ]
    owner_id: int | None = user.pk
    if user.is_staff:
        owner_id = None
        if data["user"]:
            wanted = data["user"]
            if wanted.isdigit() and len(wanted) < 12 and get_user_model().objects.filter(pk=int(wanted)).exists():
                owner_id = int(wanted)
            else:
                errors["user"] = [f"User: there is no user with id “{wanted[:20]}”."]
    else:
        # Not a filter an ordinary user has: the form never shows it.
        data["user"] = ""
    if errors or date_from is None or date_to is None:
        raise UsageQueryInvalid(errors, data)
    return UsageQuery(date_from=date_from, date_to=date_to, owner_id=owner_id)
