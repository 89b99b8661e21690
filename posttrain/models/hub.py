"""The Hugging Face hub: whether it can be reached at all, asked once and fast."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_resolves() -> bool:
    """True when the hub's host name resolves: without that every download would retry for about a minute."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT)).hostname, 443)
    except OSError:
        return False
    return True
