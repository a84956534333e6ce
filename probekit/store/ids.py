"""Creation times and run ids: the one way probekit stamps what it writes.

``created`` attributes are ISO 8601 UTC to the second (``2026-01-31T12:00:00+00:00``); result
groups (``probes/<hypothesis>/<id>``, ``patching/<id>``) are named ``<compact UTC stamp>-<hash>``
so they sort by time and two runs of different settings in the same second stay apart.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def utc_stamp() -> str:
    """Now, for a ``created`` attribute: ISO 8601 in UTC, to the second."""
    return _now().isoformat(timespec="seconds")


def run_id(payload) -> str:
    """``<YYYYmmddTHHMMSS>-<first 8 hex of sha1 of payload as sorted JSON>`` (payload: JSON-able;
    anything else is written with ``str``)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{_now().strftime('%Y%m%dT%H%M%S')}-{hashlib.sha1(blob).hexdigest()[:8]}"
