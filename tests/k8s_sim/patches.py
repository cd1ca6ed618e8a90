"""JSON Patch (RFC 6902), JSON merge patch (RFC 7386) and a strategic-merge subset."""

from __future__ import annotations

import copy


class PatchError(Exception):
    """The patch cannot be applied (the server answers 422)."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [_unescape(t) for t in path[1:].split("/")]


def _parent(doc, tokens):
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(tok)]
            except (ValueError, IndexError) as exc:
                raise PatchError(f"path element {tok!r} not found") from exc
        elif isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
            cur = cur[tok]
        else:
            raise PatchError(f"cannot descend into {tok!r}")
    return cur


def _get(doc, tokens):
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, list):
        return parent[int(last)]
    if last not in parent:
        raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return parent[last]


def _add(doc, tokens, value, replace=False):
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if replace:
            parent[idx] = value
        else:
            parent.insert(idx, value)
    else:
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: /{'/'.join(tokens)}")
        parent[last] = value
    return doc


def _remove(doc, tokens):
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        if last not in parent:
            raise PatchError(f"remove operation does not apply: doc is missing path: /{'/'.join(tokens)}")
        del parent[last]
    return doc


def json_patch(doc, ops: list) -> dict:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        tokens = _split(op.get("path", ""))
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind == "replace":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            doc = _remove(doc, tokens)
        elif kind == "test":
            if _get(doc, tokens) != op.get("value"):
                raise PatchError(f"testing value {op.get('path')} failed")
        elif kind in ("move", "copy"):
            src = _split(op["from"])
            value = copy.deepcopy(_get(doc, src))
            if kind == "move":
                doc = _remove(doc, src)
            doc = _add(doc, tokens, value)
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


def merge_patch(doc, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# Lists merged by key in a strategic-merge patch (the subset the tests and kubectl use).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "tolerations": None,
    "conditions": "type",
    "ownerReferences": "uid",
}


def strategic_merge(doc, patch, key_name: str | None = None):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return copy.deepcopy(body)
    if directive == "delete":
        return None
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in body.items():
        if key.startswith("$setElementOrder/") or key.startswith("$deleteFromPrimitiveList/"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and MERGE_KEYS.get(key) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
        elif isinstance(value, dict):
            merged = strategic_merge(out.get(key), value, key)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(current: list, patch: list, merge_key: str) -> list:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next(
            (i for i, cur in enumerate(out) if isinstance(cur, dict) and cur.get(merge_key) == item[merge_key]), None
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append({k: v for k, v in copy.deepcopy(item).items() if k != "$patch"})
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out
