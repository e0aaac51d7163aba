"""The sans-I/O protocol core of ssr-broker.

Pure functions and frozen models over bytes: no asyncio, NATS, aiohttp or
Prometheus (``tests/test_core_imports.py`` keeps it so). Time and randomness
are passed in. Modules:

- ``canonical``  strict canonical JSON (RFC 8785 subset)
- ``crypto``     the libsodium primitives used, errors mapped
- ``frame``      the binary frame around every signed object
- ``keys``       key pairs, key ids, secret key files
- ``labels``     classification ladder, TLP 2.0, labels and their order
- ``policy``     the policy file (TOML)
- ``directory``  the signed, hash-chained directory
- ``envelope``   building, verifying and opening envelopes
- ``decision``   the broker's accept/reject decision
- ``receipts``   delivered/read/acknowledged receipts
- ``incidents``  the broker's incident record
- ``grants``     key grants for actors that join an incident late
- ``bundles``    signed offline bundles of envelopes
- ``errors``     the exception tree
"""

from .bundles import BundleBody, VerifiedBundle, make_bundle, verify_bundle
from .decision import Accept, Decision, ForwardOrigin, Reason, Reject, decide
from .directory import (
    Actor,
    ActorKind,
    ActorStatus,
    BrokerService,
    DirectoryDocument,
    Group,
    KeyRecord,
    Officer,
    PrincipalKind,
    VerifiedDirectory,
    sign_directory,
    successor,
    verify_chain,
    verify_directory,
)
from .envelope import (
    Control,
    Header,
    OpenedEnvelope,
    PressStage,
    RecipientKey,
    Reference,
    SealedEnvelope,
    SignedEnvelope,
    build_envelope,
    check_sender,
    decrypt_own,
    open_envelope,
    read_envelope,
    seal_envelope,
)
from .errors import (
    BundleError,
    CanonicalJsonError,
    CoreError,
    DirectoryError,
    EnvelopeError,
    FrameError,
    GrantError,
    KeyFileError,
    MalformedInput,
    OpenError,
    PolicyError,
    ReceiptError,
)
from .grants import GrantBody, VerifiedGrant, grantable, make_grant, open_grant, verify_grant
from .incidents import Incident, IncidentEntry
from .keys import EncryptionKeyPair, Identity, SigningKeyPair, load_identity, save_identity
from .labels import DEFAULT_CEILING, STANDARD_LADDER, Label, Ladder, Tlp
from .notices import (
    BrokerIdentity,
    NoticeBody,
    NoticeError,
    NoticeKind,
    make_notice,
    verify_notice,
)
from .policy import IncidentType, Policy, load_policy
from .receipts import (
    ReceiptBody,
    ReceiptKind,
    VerifiedReceipt,
    check_receipt_matches,
    make_receipt,
    verify_receipt,
)
from .vocabulary import MessageType, Mode, Priority, ReferenceKind, Role, Status

__all__ = [
    "DEFAULT_CEILING",
    "STANDARD_LADDER",
    "Accept",
    "Actor",
    "ActorKind",
    "ActorStatus",
    "BrokerIdentity",
    "BrokerService",
    "BundleBody",
    "BundleError",
    "CanonicalJsonError",
    "Control",
    "CoreError",
    "Decision",
    "DirectoryDocument",
    "DirectoryError",
    "EncryptionKeyPair",
    "EnvelopeError",
    "ForwardOrigin",
    "FrameError",
    "GrantBody",
    "GrantError",
    "Group",
    "Header",
    "Identity",
    "Incident",
    "IncidentEntry",
    "IncidentType",
    "KeyFileError",
    "KeyRecord",
    "Label",
    "Ladder",
    "MalformedInput",
    "MessageType",
    "Mode",
    "NoticeBody",
    "NoticeError",
    "NoticeKind",
    "Officer",
    "OpenError",
    "OpenedEnvelope",
    "Policy",
    "PolicyError",
    "PressStage",
    "PrincipalKind",
    "Priority",
    "Reason",
    "ReceiptBody",
    "ReceiptError",
    "ReceiptKind",
    "RecipientKey",
    "Reference",
    "ReferenceKind",
    "Reject",
    "Role",
    "SealedEnvelope",
    "SignedEnvelope",
    "SigningKeyPair",
    "Status",
    "Tlp",
    "VerifiedBundle",
    "VerifiedDirectory",
    "VerifiedGrant",
    "VerifiedReceipt",
    "build_envelope",
    "check_receipt_matches",
    "check_sender",
    "decide",
    "decrypt_own",
    "grantable",
    "load_identity",
    "load_policy",
    "make_bundle",
    "make_grant",
    "make_notice",
    "make_receipt",
    "open_envelope",
    "open_grant",
    "read_envelope",
    "save_identity",
    "seal_envelope",
    "sign_directory",
    "successor",
    "verify_bundle",
    "verify_chain",
    "verify_directory",
    "verify_grant",
    "verify_notice",
    "verify_receipt",
]
