"""Whether a bind address is reachable only from this host. Pure: nothing is resolved.

Both servers (``eas-server`` and the control plane, ``autoai up``) refuse to listen beyond
loopback without a token unless told ``--insecure``; this is the one copy of the address rule.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this host only.

    True for ``127.0.0.0/8``, ``::1`` (bracketed or not, an IPv4-mapped ``::ffff:127.x.y.z``
    too) and ``localhost``. Everything else is beyond loopback: the wildcards ``0.0.0.0``,
    ``::`` and ``""``, any other address, and every other hostname, since what a name resolves
    to is not known without asking (``/etc/hosts``, DNS) and may change.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False  # a hostname, or a shorthand such as "127.1" that only the OS expands
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
