# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How every connection helper words a failure: one line, a hint, no secret.

Pure: no Ansible, no client library. Each `_<service>_client.py` keeps its own table of
(regex, hint) pairs and calls `connection_failure()`.
"""

from __future__ import annotations

import re

REDACTED = "********"


def redact(text: str, secrets) -> str:
    """Replace every secret in `text`; longest first, so a DSN goes whole before its password."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def first_hint(hints, reason: str, default: str) -> str:
    """The hint of the first (pattern, hint) pair whose pattern matches `reason`."""
    for pattern, hint in hints:
        if re.search(pattern, reason, re.IGNORECASE):
            return hint
    return default


def connection_failure(what: str, reason, hints, default_hint: str, secrets=()) -> str:
    """`cannot connect to X: <reason on one line>; <what to do>`, with secrets redacted."""
    reason = " ".join(str(reason).split())
    return redact(f"{what}: {reason}; {first_hint(hints, reason, default_hint)}", secrets)
