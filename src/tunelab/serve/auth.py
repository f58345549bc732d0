"""API keys: who may call, and whose objects a call sees.

Keys come from a YAML file (`--keys FILE`: `keys: [{key: ..., org: ...}]`) or `TUNELAB_API_KEYS`
(comma-separated `KEY` or `ORG=KEY`). A caller is known by the SHA-256 of its key (the store keeps that, never
the key); `org` names the organisation in its `ft:` model names ("personal" when not given, as OpenAI names a
personal account). With no keys at all the server is open to whoever reaches it, and so binds only to a
loopback address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.errors import ConfigError
from tunelab.serve.errors import ApiError

ORG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_ORG = "personal"
OPEN = "local"  # the one owner of a server without keys


@dataclass(frozen=True)
class Caller:
    owner: str
    org: str


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(path: Path | None, env: str | None = None) -> dict[str, Caller]:
    """Callers by the hash of their key, from the file and the environment variable together."""
    entries: list[tuple[str, str]] = []
    if path is not None:
        entries += _file_keys(Path(path))
    env = os.environ.get("TUNELAB_API_KEYS", "") if env is None else env
    for item in (part.strip() for part in env.split(",")):
        if item:
            org, sep, key = item.partition("=")
            entries.append((key, org) if sep and ORG.match(org) and key else (item, DEFAULT_ORG))
    return {owner_of(key): Caller(owner_of(key), org) for key, org in entries}


def _file_keys(path: Path) -> list[tuple[str, str]]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the API keys: {str(err).splitlines()[0]}") from None
    items = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f'{path}: expected "keys:" with a list of {{key: ..., org: ...}}')
    found = []
    for i, item in enumerate(items):
        key, org = (item.get("key"), item.get("org", DEFAULT_ORG)) if isinstance(item, dict) else (None, None)
        if not isinstance(key, str) or len(key) < 8 or not isinstance(org, str) or not ORG.match(org):
            raise ConfigError(f"{path}: keys[{i}]: expected {{key: <at least 8 characters>, org: <letters, digits, "
                              "- or _>}")
        found.append((key, org))
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: dict[str, Caller]) -> None:
    if not keys and not is_loopback(host):
        raise ConfigError(f"serve: refusing to listen on {host} without API keys: anyone who reaches it could train "
                          "and read your data; give --keys FILE or TUNELAB_API_KEYS, or bind 127.0.0.1")


def authenticate(keys: dict[str, Caller], header: str | None) -> Caller:
    """The caller of a request from its Authorization header; 401 in OpenAI's words otherwise."""
    if not keys:
        return Caller(OPEN, DEFAULT_ORG)
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                       code="missing_api_key")
    caller = keys.get(owner_of(token.strip()))
    if caller is None:
        shown = token.strip()[:3] + "*" * 4 + token.strip()[-4:] if len(token.strip()) > 8 else "****"
        raise ApiError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")
    return caller
