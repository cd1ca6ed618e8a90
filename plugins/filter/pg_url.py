# Copyright: ops.runbooks contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ops.runbooks.pg_url: read or change one part of a PostgreSQL connection URL."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.ops.runbooks.plugins.module_utils._pg_url import PgUrlError, read_part, replace_parts


def pg_url(url, part=None, database=None, host=None, port=None):
    try:
        if part is not None:
            if database is not None or host is not None or port is not None:
                raise PgUrlError("pass either part (to read) or database/host/port (to change), not both")
            return read_part(url, part)
        return replace_parts(url, database=database, host=host, port=port)
    except PgUrlError as exc:
        raise AnsibleFilterError(f"ops.runbooks.pg_url: {exc}") from exc


class FilterModule:
    def filters(self):
        return {"pg_url": pg_url}
