"""A small fake Kubernetes API server (stdlib, threaded) in front of Store + Controller.

Serves legacy discovery (/api, /apis, /api/v1, /apis/apps/v1), /version, and for the
resources in store.RESOURCES: GET (object / list with labelSelector, fieldSelector, limit
and continue / watch), POST, PUT, PATCH (json-patch, merge-patch, strategic-merge subset),
DELETE, and the status subresource. Optional bearer-token auth (everything but /version,
like an EKS cluster's anonymous public-info access). Responses are compact JSON with sorted
keys, which is also how Go serialises a ControllerRevision's data.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .controller import Controller
from .patches import PatchError, json_patch, merge_patch, strategic_merge
from .store import RESOURCES, ApiError, Store, group_of, not_found

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-fake",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client (kubectl) closing a watch mid-stream is normal; anything else is reported
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _resource_list(gv: str) -> dict:
    res = []
    for (g, plural), (kind, namespaced) in sorted(RESOURCES.items()):
        if g != gv:
            continue
        res.append(
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": VERBS,
                **(
                    {
                        "shortNames": {
                            "deployments": ["deploy"],
                            "daemonsets": ["ds"],
                            "statefulsets": ["sts"],
                            "replicasets": ["rs"],
                            "namespaces": ["ns"],
                            "pods": ["po"],
                        }[plural]
                    }
                    if plural in ("deployments", "daemonsets", "statefulsets", "replicasets", "namespaces", "pods")
                    else {}
                ),
            }
        )
        if plural in ("deployments", "statefulsets", "daemonsets", "replicasets"):
            res.append(
                {
                    "name": f"{plural}/status",
                    "singularName": "",
                    "namespaced": True,
                    "kind": kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}


class FakeApiServer:
    """Start with `with FakeApiServer() as srv:`; `srv.url`, `srv.store`, `srv.controller`.

    auto_tick: seconds between controller ticks in a background thread (None = manual
    `srv.controller.tick()`, fully deterministic). token: bearer token required (None = any).
    """

    def __init__(
        self, seed: str = "seed", auto_tick: float | None = None, token: str | None = None, tick_seconds: int = 10
    ):
        self.store = Store(seed)
        self.controller = Controller(self.store, tick_seconds=tick_seconds)
        self.token = token
        self.auto_tick = auto_tick
        self.requests: list[tuple[str, str, str]] = []  # (method, path+query, content-type)
        self.patches: list[tuple[str, str, object]] = []  # (path, content-type, body) of every PATCH
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ----
    def start(self) -> FakeApiServer:
        t = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        self._threads.append(t)
        if self.auto_tick:
            t2 = threading.Thread(target=self._ticker, daemon=True)
            t2.start()
            self._threads.append(t2)
        return self

    def _ticker(self):
        while not self._stop.wait(self.auto_tick):
            self.controller.tick()

    def stop(self) -> None:
        self._stop.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- direct access for tests (same code path as the HTTP API) ----
    def create(self, plural: str, obj: dict, ns: str = "default") -> dict:
        gv = next(g for (g, p) in RESOURCES if p == plural)
        out = self.store.create(plural, ns if RESOURCES[(gv, plural)][1] else None, obj, gv)
        self.controller.sync()
        return out

    def get(self, plural: str, name: str, ns: str = "default") -> dict | None:
        return self.store.get(plural, ns, name)

    def patch(self, plural: str, name: str, body, ptype: str = "merge", ns: str = "default") -> dict:
        out = self._patch(plural, ns, name, body, ptype, None)
        self.controller.sync()
        return out

    def _patch(self, plural, ns, name, body, ptype, subresource):
        with self.store.lock:
            cur = self.store.get(plural, ns, name)
            if cur is None:
                gv = next(g for (g, p) in RESOURCES if p == plural)
                raise not_found(plural, group_of(gv), name)
            try:
                if ptype == "json":
                    new = json_patch(cur, body)
                elif ptype == "merge":
                    new = merge_patch(cur, body)
                elif ptype == "strategic":
                    new = strategic_merge(cur, body)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"patch type {ptype} not supported")
            except PatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ApiError(422, "Invalid", f"invalid patch: {exc}") from exc
            return self.store.update(plural, ns, name, new, subresource=subresource, check_rv=False)

    # ---- HTTP ----
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, obj) -> None:
                body = _dumps(obj)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if not raw:
                    return None
                try:
                    return json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from exc

            def _dispatch(self, method: str):
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                server.requests.append((method, self.path, self.headers.get("Content-Type", "")))
                try:
                    if parsed.path in ("/version", "/version/"):
                        return self._send(200, VERSION)
                    if server.token is not None and self.headers.get("Authorization") != f"Bearer {server.token}":
                        return self._send(401, ApiError(401, "Unauthorized", "Unauthorized").status())
                    self._route(method, parsed.path, query)
                except ApiError as exc:
                    self._send(exc.code, exc.status())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _route(self, method, path, query):
                parts = [p for p in path.split("/") if p]
                if path in ("/api", "/api/"):
                    return self._send(
                        200,
                        {
                            "kind": "APIVersions",
                            "versions": ["v1"],
                            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
                        },
                    )
                if path in ("/apis", "/apis/"):
                    gv = {"groupVersion": "apps/v1", "version": "v1"}
                    return self._send(
                        200,
                        {
                            "kind": "APIGroupList",
                            "apiVersion": "v1",
                            "groups": [{"name": "apps", "versions": [gv], "preferredVersion": gv}],
                        },
                    )
                if parts == ["api", "v1"]:
                    return self._send(200, _resource_list("v1"))
                if parts == ["apis", "apps", "v1"]:
                    return self._send(200, _resource_list("apps/v1"))
                if parts == ["apis", "apps"]:
                    gv = {"groupVersion": "apps/v1", "version": "v1"}
                    return self._send(
                        200,
                        {
                            "kind": "APIGroup",
                            "apiVersion": "v1",
                            "name": "apps",
                            "versions": [gv],
                            "preferredVersion": gv,
                        },
                    )
                if parts[:1] == ["api"] and len(parts) >= 3:
                    gv, rest = "v1", parts[2:]
                elif parts[:1] == ["apis"] and len(parts) >= 4:
                    gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
                else:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                ns = None
                if rest[0] == "namespaces" and len(rest) >= 3:
                    ns, rest = rest[1], rest[2:]
                plural = rest[0]
                if (gv, plural) not in RESOURCES:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                name = rest[1] if len(rest) > 1 else None
                sub = rest[2] if len(rest) > 2 else None
                if sub not in (None, "status"):
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                kind = RESOURCES[(gv, plural)][0]
                if method == "GET" and name is None:
                    if query.get("watch") in ("true", "1"):
                        return self._watch(plural, ns, query)
                    return self._list(gv, kind, plural, ns, query)
                if method == "GET":
                    obj = server.store.get(plural, ns, name)
                    if obj is None:
                        raise not_found(plural, group_of(gv), name)
                    return self._send(200, obj)
                if method == "POST" and name is None:
                    body = self._body() or {}
                    if query.get("dryRun"):
                        return self._send(201, body)
                    obj = server.store.create(plural, ns, body, gv)
                    server.controller.sync()
                    return self._send(201, server.store.get(plural, ns, obj["metadata"]["name"]) or obj)
                if method == "PUT" and name:
                    body = self._body() or {}
                    obj = server.store.update(plural, ns, name, body, subresource=sub)
                    server.controller.sync()
                    return self._send(200, server.store.get(plural, ns, name) or obj)
                if method == "PATCH" and name:
                    ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                    ptype = {
                        "application/json-patch+json": "json",
                        "application/merge-patch+json": "merge",
                        "application/strategic-merge-patch+json": "strategic",
                    }.get(ctype)
                    if ptype is None:
                        raise ApiError(
                            415,
                            "UnsupportedMediaType",
                            "the body of the request was in an unknown format - accepted media types include: "
                            "application/json-patch+json, application/merge-patch+json, "
                            f"application/strategic-merge-patch+json (got {ctype})",
                        )
                    body = self._body()
                    server.patches.append((path, ctype, body))
                    if query.get("dryRun"):
                        with server.store.lock:
                            cur = server.store.get(plural, ns, name)
                            if cur is None:
                                raise not_found(plural, group_of(gv), name)
                            return self._send(200, cur)
                    obj = server._patch(plural, ns, name, body, ptype, sub)
                    server.controller.sync()
                    return self._send(200, server.store.get(plural, ns, name) or obj)
                if method == "DELETE" and name:
                    obj = server.store.delete(plural, ns, name)
                    server.controller.sync()
                    return self._send(200, obj)
                raise ApiError(405, "MethodNotAllowed", f"method {method} not allowed on {path}")

            def _list(self, gv, kind, plural, ns, query):
                items = server.store.list(plural, ns, query.get("labelSelector"), query.get("fieldSelector"))
                start = int(query.get("continue") or 0)
                limit = int(query.get("limit") or 0)
                meta = {"resourceVersion": str(server.store.rv)}
                if limit and start + limit < len(items):
                    meta["continue"] = str(start + limit)
                    meta["remainingItemCount"] = len(items) - start - limit
                    items = items[start : start + limit]
                else:
                    items = items[start:]
                self._send(200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": meta, "items": items})

            def _watch(self, plural, ns, query):
                from .store import field_match, label_match  # noqa: PLC0415

                since = int(query.get("resourceVersion") or 0) or server.store.rv
                deadline = time.monotonic() + min(float(query.get("timeoutSeconds") or 30), 30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while not server._stop.is_set() and time.monotonic() < deadline:
                        with server.store.cond:
                            events = [e for e in server.store.events if e[0] > since and e[1] == plural]
                            if not events:
                                server.store.cond.wait(0.2)
                                continue
                        for rv, _p, etype, obj in events:
                            since = rv
                            if ns and obj["metadata"].get("namespace") != ns:
                                continue
                            if not (
                                label_match(query.get("labelSelector"), obj["metadata"].get("labels"))
                                and field_match(query.get("fieldSelector"), obj)
                            ):
                                continue
                            line = _dumps({"type": etype, "object": obj}) + b"\n"
                            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_PATCH(self):
                self._dispatch("PATCH")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler
