"""ssr-broker: secure information sharing for Samverkan Stockholmsregionen.

`broker.core` is the sans-I/O protocol core (envelopes, labels, policy,
directory, receipts). The async service shell arrives on top of it.
"""

__version__ = "0.1.0"
