"""The core stays sans-I/O, its public surface is deliberate, and the schemas are current."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import broker.core
from broker.schemagen import build_schemas, render

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "broker" / "core"
FORBIDDEN = {"asyncio", "nats", "aiohttp", "prometheus_client", "socket", "subprocess", "threading"}


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_io_framework(module: Path):
    assert imported_roots(module.read_text(encoding="utf-8")).isdisjoint(FORBIDDEN)


def test_import_scan_detects_a_forbidden_import():
    assert "asyncio" in imported_roots("import asyncio.subprocess\n")
    assert "nats" in imported_roots("from nats.js import api\n")


def test_core_modules_are_all_scanned():
    names = {p.stem for p in CORE.glob("*.py")}
    assert {"envelope", "decision", "directory", "policy", "receipts", "labels"} <= names


EXPECTED_EXPORTS = {
    "DEFAULT_CEILING", "STANDARD_LADDER", "Accept", "Actor", "ActorKind", "ActorStatus",
    "CanonicalJsonError", "CoreError", "Decision", "DirectoryDocument", "DirectoryError",
    "EncryptionKeyPair", "EnvelopeError", "ForwardOrigin", "FrameError", "Group", "Header",
    "Identity", "KeyFileError", "KeyRecord", "Label", "Ladder", "MalformedInput", "MessageType",
    "Mode", "Officer", "OpenError", "OpenedEnvelope", "Policy", "PolicyError", "Priority",
    "Reason", "ReceiptBody", "ReceiptError", "ReceiptKind", "RecipientKey", "Reference",
    "ReferenceKind", "Reject", "Role", "SignedEnvelope", "SigningKeyPair", "Status", "Tlp",
    "VerifiedDirectory", "VerifiedReceipt", "build_envelope", "check_receipt_matches", "decide",
    "load_identity", "load_policy", "make_receipt", "open_envelope", "read_envelope",
    "save_identity", "sign_directory", "successor", "verify_chain", "verify_directory",
    "verify_receipt", "BrokerService", "PrincipalKind", "Control", "Incident", "BrokerIdentity",
    "NoticeBody", "NoticeError", "NoticeKind", "make_notice", "verify_notice",
    # crisis workflows: key grants for late joiners, offline bundles, press lines, catalogue
    "BundleBody", "BundleError", "VerifiedBundle", "make_bundle", "verify_bundle",
    "GrantBody", "GrantError", "VerifiedGrant", "grantable", "make_grant", "open_grant",
    "verify_grant", "IncidentEntry", "IncidentType", "PressStage", "SealedEnvelope",
    "seal_envelope", "decrypt_own",
    # a freshly sealed envelope checked without verifying its own signature again
    "check_sender",
}  # fmt: skip


def test_public_api_is_deliberate():
    assert set(broker.core.__all__) == EXPECTED_EXPORTS
    for name in broker.core.__all__:
        assert hasattr(broker.core, name), name


def test_every_core_error_derives_from_one_root():
    for name in broker.core.__all__:
        value = getattr(broker.core, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, broker.core.CoreError), name


@pytest.mark.parametrize("name", sorted(build_schemas()))
def test_published_schema_matches_models(name: str):
    published = ROOT / "schemas" / f"{name}.schema.json"
    assert published.read_text(encoding="utf-8") == render(build_schemas()[name]), (
        f"schemas/{name}.schema.json drifted from the models: run `make schemas`"
    )


def test_published_schemas_accept_the_vector_documents_and_refuse_a_missing_field():
    import json

    import jsonschema

    vectors = ROOT / "schemas" / "vectors"
    schemas = build_schemas()
    valid = json.loads((vectors / "envelope-valid.json").read_text(encoding="utf-8"))
    receipt = json.loads((vectors / "receipt.json").read_text(encoding="utf-8"))
    documents = {
        "header": valid["expected"]["header"],
        "key-wraps": valid["expected"]["wraps"],
        "receipt-body": receipt["expected"]["body"],
        "label": valid["expected"]["header"]["label"],
    }
    for name, document in documents.items():
        jsonschema.validate(document, schemas[name])
        incomplete = dict(document)
        incomplete.pop(sorted(incomplete)[0])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(incomplete, schemas[name])


def test_fast_model_encoder_equals_the_reference_encoder():
    """WireModel.to_bytes uses the C encoder; it must agree with canonical.dumps."""
    import json

    from broker.core import canonical

    vectors = ROOT / "schemas" / "vectors"
    valid = json.loads((vectors / "envelope-valid.json").read_text(encoding="utf-8"))
    chain = json.loads((vectors / "directory-chain.json").read_text(encoding="utf-8"))
    documents = [valid["expected"]["header"], valid["expected"]["wraps"]]
    documents.append(json.loads(bytes.fromhex(chain["versions"][2])[26:-64]))
    documents.append({"name": 'Ä\u2028\x7f\x00"\\', "list": [None, True, -(2**53 - 1)]})
    for document in documents:
        assert canonical.dumps_ascii_keys(document) == canonical.dumps(document)
