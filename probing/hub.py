"""Is the Hugging Face hub reachable? Asked once per process, answered in at most a second or two.

Without a network, libraries retry a hub for many seconds before they fall back to the local cache;
melodia asks first and, when the hub cannot be reached (or HF_HUB_OFFLINE is set), loads from the
local cache only, so a missing checkpoint is reported at once.

Examples:
    >>> hub_offline()          # True here: no network
    True
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 1.5


def _offline_by_environment() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.lru_cache(maxsize=1)
def _unreachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=CONNECT_TIMEOUT_S):
            return False
    except OSError:
        return True


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub's host does not answer; then HF_HUB_OFFLINE is set for
    this process too, so libraries imported afterwards do not retry it either."""
    if _offline_by_environment():
        return True
    if _unreachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        return True
    return False
