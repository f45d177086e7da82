"""The Access keys page's create form: its rules and its messages."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import QueryDict

MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class TokenRequest:
    name: str
    days: int


class TokenRequestInvalid(Exception):
    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in errors.items()))
        self.errors = errors


def token_data_from_post(post: QueryDict) -> dict[str, str]:
    return {"name": post.get("name", ""), "days": post.get("days", "")}


def token_request_parse(data: Mapping[str, Any]) -> TokenRequest:
    errors: dict[str, list[str]] = {}
    name = data.get("name", "").strip()
    if not name:
        errors["name"] = ["Enter a name, e.g. the program that will use the token."]
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = [f"Ensure the name has at most {MAX_NAME_LENGTH} characters (it has {len(name)})."]
    elif not name.isprintable():
        errors["name"] = ["The name must not contain control characters."]
    raw_days = str(data.get("days", "")).strip()
    days = 0
    try:
        days = int(raw_days)
    except ValueError:
        errors["days"] = [f"Enter a whole number of days from 1 to {settings.ACCESS_TOKEN_MAX_DAYS}."]
    else:
        if not 1 <= days <= settings.ACCESS_TOKEN_MAX_DAYS:
            errors["days"] = [f"The expiry must be from 1 to {settings.ACCESS_TOKEN_MAX_DAYS} days."]
    if errors:
        raise TokenRequestInvalid(errors)
    return TokenRequest(name=name, days=days)
