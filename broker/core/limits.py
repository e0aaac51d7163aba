"""Named bounds for every size the protocol accepts.

The policy file may lower some of them (``[limits]``) but never raise them
above these hard ceilings: a parser that trusts a number from its input is
how a fan-out flood or a memory exhaustion starts.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# Envelopes
MAX_ENVELOPE_BYTES: Final = 4 * MIB  # hard ceiling; policy default is lower
DEFAULT_MAX_ENVELOPE_BYTES: Final = 1 * MIB
MAX_HEADER_BYTES: Final = 32 * KIB
MAX_WRAPS_BYTES: Final = 64 * KIB
MAX_RECIPIENTS: Final = 200  # hard ceiling; policy default is lower
DEFAULT_MAX_RECIPIENTS: Final = 64
MAX_REFERENCES: Final = 16
MAX_CATEGORIES: Final = 16
MAX_LABEL_BYTES: Final = 1 * KIB
MAX_ID_CHARS: Final = 64
MAX_NAME_CHARS: Final = 200
MAX_TEXT_CHARS: Final = 2000

# Receipts and directory
MAX_RECEIPT_BYTES: Final = 4 * KIB
MAX_DIRECTORY_BYTES: Final = 4 * MIB
MAX_DIRECTORY_ACTORS: Final = 1000
MAX_KEYS_PER_ACTOR: Final = 8
MAX_GROUPS: Final = 200

# JSON
MAX_JSON_DEPTH: Final = 16
MAX_SAFE_INTEGER: Final = 2**53 - 1  # I-JSON (RFC 7493) interoperable integers

# Time
DEFAULT_CLOCK_SKEW_MS: Final = 120_000
DEFAULT_MAX_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
