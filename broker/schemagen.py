"""JSON Schemas of the protocol documents, generated from the core's models.

``python -m broker.schemagen schemas`` writes ``schemas/<name>.schema.json``;
a test regenerates them and fails when the published files drift from the
models. The schemas describe the JSON sections; the binary frame around
them and the rules a schema cannot say (canonical form, signatures) are in
``schemas/PROTOCOL.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from broker.core.bundles import BundleBody
from broker.core.directory import DirectoryDocument
from broker.core.envelope import Header, KeyWraps
from broker.core.grants import GrantBody
from broker.core.incidents import Incident, IncidentEntry
from broker.core.labels import Label
from broker.core.notices import NoticeBody
from broker.core.policy import Policy
from broker.core.receipts import ReceiptBody
from broker.core.wire import WireModel

MODELS: dict[str, type[BaseModel]] = {
    "header": Header,
    "label": Label,
    "key-wraps": KeyWraps,
    "receipt-body": ReceiptBody,
    "notice-body": NoticeBody,
    "directory": DirectoryDocument,
    "grant-body": GrantBody,
    "bundle-body": BundleBody,
    "incident": Incident,
    "incident-entry": IncidentEntry,
    "policy": Policy,
}


def _all_required(schema: dict[str, Any]) -> None:
    """Wire documents carry every field (null where absent): one encoding per document."""
    for definition in [schema, *schema.get("$defs", {}).values()]:
        if "properties" in definition:
            definition["required"] = list(definition["properties"])


def build_schemas() -> dict[str, dict[str, Any]]:
    result = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="validation")
        if issubclass(model, WireModel):
            _all_required(schema)
        result[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://ssr-broker.invalid/schemas/{name}.schema.json",
            **schema,
        }
    return result


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, schema in build_schemas().items():
        (target / f"{name}.schema.json").write_text(render(schema), encoding="utf-8")
        print(f"wrote {target / name}.schema.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
