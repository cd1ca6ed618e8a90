from __future__ import annotations

from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import (
    REDACTED,
    connection_failure,
    first_hint,
    redact,
)

HINTS = [(r"refused", "start the server"), (r"password", "check the password")]


def test_redact_replaces_the_longest_secret_first():
    dsn = "postgresql://app:hunter2@db/app"
    assert redact(f"bad dsn {dsn}", ["hunter2", dsn, None, ""]) == f"bad dsn {REDACTED}"


def test_first_hint_matches_case_insensitively_in_order_else_default():
    assert first_hint(HINTS, "Connection REFUSED", "default") == "start the server"
    assert first_hint(HINTS, "refused: password", "default") == "start the server"
    assert first_hint(HINTS, "something else", "default") == "default"


def test_connection_failure_is_one_line_with_hint_and_no_secret():
    msg = connection_failure("cannot connect to X", "FATAL:  password\n  for s3cret failed", HINTS,
                             "default", ["s3cret"])
    assert msg == f"cannot connect to X: FATAL: password for {REDACTED} failed; check the password"
