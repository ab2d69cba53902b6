"""Trim Twilio's OpenAPI spec to the endpoints our tests call, keeping everything those endpoints reference.

    python tests/contracts/specs/trim.py ORIGINAL/twilio_api_v2010.json tests/contracts/specs/twilio_api_v2010.json

The original is `spec/json/twilio_api_v2010.json` of twilio/twilio-oai (see README.md here for the commit). The
output keeps, of the original: `openapi`, `info`, `servers`, `security`, the whole path items listed in
`KEEP_PATHS` (every method on them), every `components` entry those path items reference, directly or through
other entries (`$ref` followed transitively), every security scheme, and the tags the kept operations use.
Nothing is edited, only dropped, so Prism validates the kept endpoints exactly as it does with the full spec.
The output is the same bytes every run for the same input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# What the service sends through the SDK (service/providers/twilio_sms.py: messages.create) and what the fake
# provider answers (tests/support/fake_providers.py): POST .../Messages.json. Nothing else is called.
KEEP_PATHS = ["/2010-04-01/Accounts/{AccountSid}/Messages.json"]


def refs_in(node: Any) -> set[str]:
    """Every local `$ref` target ("#/components/...") anywhere inside `node`."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith("#/"):
                    raise SystemExit(f"not a local reference, cannot trim safely: {ref}")
                found.add(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def resolve(spec: dict[str, Any], ref: str) -> tuple[list[str], Any]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
    node: Any = spec
    for part in parts:
        node = node[part]
    return parts, node


def trim(spec: dict[str, Any], keep_paths: list[str]) -> dict[str, Any]:
    missing = [p for p in keep_paths if p not in spec["paths"]]
    if missing:
        raise SystemExit(f"not in the spec: {missing}")
    paths = {p: spec["paths"][p] for p in keep_paths}

    # Follow references until nothing new turns up.
    kept: dict[tuple[str, ...], Any] = {}
    todo = refs_in(paths)
    seen: set[str] = set()
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        parts, node = resolve(spec, ref)
        if parts[0] != "components" or len(parts) != 3:
            raise SystemExit(f"unexpected reference shape, cannot trim safely: {ref}")
        kept[tuple(parts)] = node
        todo |= refs_in(node) - seen

    components: dict[str, dict[str, Any]] = {}
    for section, entries in spec.get("components", {}).items():
        if section == "securitySchemes":
            components[section] = entries
            continue
        chosen = {name: body for name, body in entries.items() if ("components", section, name) in kept}
        if chosen:
            components[section] = chosen

    used_tags = {tag for item in paths.values() for op in item.values() if isinstance(op, dict)
                 for tag in op.get("tags", [])}
    out: dict[str, Any] = {}
    for key, value in spec.items():  # the original's key order
        if key == "paths":
            out[key] = paths
        elif key == "components":
            out[key] = components
        elif key == "tags":
            out[key] = [tag for tag in value if tag.get("name") in used_tags]
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, help="the untrimmed twilio_api_v2010.json")
    parser.add_argument("output", type=Path, help="where to write the trimmed spec")
    args = parser.parse_args(argv)
    raw = args.original.read_bytes()
    trimmed = trim(json.loads(raw), KEEP_PATHS)
    text = json.dumps(trimmed, indent=2, ensure_ascii=False) + "\n"
    args.output.write_text(text, encoding="utf-8")
    schemas = len(trimmed["components"].get("schemas", {}))
    print(f"{args.original} (sha256 {hashlib.sha256(raw).hexdigest()}, {len(raw)} bytes) -> {args.output} "
          f"({len(text.encode())} bytes; {len(trimmed['paths'])} paths, {schemas} schemas)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
