"""Every Prometheus metric of the broker service, on a registry the caller injects.

:class:`BrokerMetrics` never touches ``prometheus_client``'s global default
registry (STYLE.md habit 10), so any number of brokers and tests can live in
one process. Label values are bounded by construction: distribution status,
priority, classification, receipt kind, reason codes, notice kinds, modes and
error stages are closed vocabularies. Message ids and actor ids never appear
as labels; who sent or received what belongs in the audit trail, not in a
time series.

Metrics (attribute in parentheses):

======================================================  =======================================
``ssr_broker_envelopes_received_total{status}``          (``received``) submissions read
``ssr_broker_envelopes_accepted_total{status}``          (``accepted``) policy said accept
``ssr_broker_envelopes_rejected_total{reason,status}``   (``rejected``) policy said reject
``ssr_broker_deliveries_total{classification,priority,status}``  (``deliveries``) per recipient
``ssr_broker_receipts_total{kind,status}``               (``receipts``) receipts recorded
``ssr_broker_receipts_rejected_total{reason}``           (``receipts_rejected``)
``ssr_broker_escalations_total{priority,status}``        (``escalations``) missed deadlines
``ssr_broker_notices_sent_total{kind}``                  (``notices``) notices to senders
``ssr_broker_requests_overdue_total{priority,status}``   (``requests_overdue``) unanswered RFIs
``ssr_broker_grant_requests_total{status}``              (``grant_requests``) asked originators
``ssr_broker_grants_refused_total{status}``              (``grants_refused``) not grantable
``ssr_broker_grants_total{status}``                      (``grants``) grants delivered
``ssr_broker_grants_rejected_total{reason}``             (``grants_rejected``) grants refused
``ssr_broker_decision_seconds``                          (``decision_seconds``) histogram
``ssr_broker_routing_seconds``                           (``routing_seconds``) histogram
``ssr_broker_audit_events_total{kind}``                  (``audit_events``)
``ssr_broker_audit_checkpoints_total``                   (``audit_checkpoints``)
``ssr_broker_audit_verified``                            (``audit_verified``: 1, 0, -1)
``ssr_broker_audit_sealed_through``                      (``audit_sealed_through``)
``ssr_broker_nats_connected``                            (``nats_connected``) gauge 0/1
``ssr_broker_nats_reconnects_total``                     (``nats_reconnects``)
``ssr_broker_nats_disconnects_total``                    (``nats_disconnects``)
``ssr_broker_consumer_pending_messages``                 (``consumer_pending``) gauge
``ssr_broker_consumer_redelivered_total``                (``redelivered``)
``ssr_broker_directory_version``                         (``directory_version``) gauge
``ssr_broker_mode{mode}``                                (``mode``) 1 for the current mode
``ssr_broker_open_incidents{status}``                    (``open_incidents``) gauge
``ssr_broker_build_info{version}``                       (``build_info``) always 1
``ssr_broker_errors_total{stage}``                       (``errors``) unexpected internal errors
======================================================  =======================================

``decision_seconds`` times the pure policy decision (tens of microseconds to
tens of milliseconds); ``routing_seconds`` runs from the moment a submission
is received until JetStream has acknowledged every delivery it fans out to.

Example::

    registry = CollectorRegistry()
    metrics = BrokerMetrics(registry)
    metrics.received.labels(status=status_label(header.status)).inc()
    metrics.set_mode("activated")
    body, content_type = metrics.render()
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from broker import __version__
from broker.core.receipts import ReceiptKind
from broker.core.vocabulary import Mode, Priority, Status

__all__ = [
    "DECISION_BUCKETS",
    "ERROR_STAGES",
    "INCIDENT_STATUSES",
    "MODES",
    "NOTICE_KINDS",
    "RECEIPT_KINDS",
    "ROUTING_BUCKETS",
    "STATUS_LABELS",
    "UNKNOWN_STATUS",
    "BrokerMetrics",
    "ErrorStage",
    "NoticeKind",
    "status_label",
]

UNKNOWN_STATUS: Final = "unknown"
"""Status label for a submission whose distribution status could not be read."""

STATUS_LABELS: Final[tuple[str, ...]] = (*(s.value for s in Status), UNKNOWN_STATUS)
"""Every value the ``status`` label takes: actual, exercise, test, unknown."""

PRIORITIES: Final[tuple[str, ...]] = tuple(p.value for p in Priority)
RECEIPT_KINDS: Final[tuple[str, ...]] = tuple(k.value for k in ReceiptKind)
MODES: Final[tuple[str, ...]] = tuple(m.value for m in Mode)
INCIDENT_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in Status)
"""Every value of ``open_incidents``' status label (an incident always has a status)."""

NoticeKind = Literal[
    "accepted", "rejected", "escalation", "receipt", "overdue", "grant_request"
]  # fmt: skip
NOTICE_KINDS: Final[tuple[str, ...]] = get_args(NoticeKind)

ErrorStage = Literal["decode", "decide", "publish", "audit", "receipt", "sweep", "http"]
ERROR_STAGES: Final[tuple[str, ...]] = get_args(ErrorStage)
"""Where an unexpected internal error happened; ``http`` is the HTTP error middleware."""

DECISION_BUCKETS: Final[tuple[float, ...]] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
)
"""50 µs .. 50 ms: a decision is a signature check and a few table look-ups."""

ROUTING_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""1 ms .. 10 s: submission received to every delivery acknowledged by JetStream."""


def status_label(status: object) -> str:
    """The bounded ``status`` label value for a distribution status from a header.

    Anything that is not a known :class:`~broker.core.Status` (``None``, a
    malformed value from an envelope that did not decode) becomes
    ``"unknown"``, so hostile input can never mint new series.

    >>> status_label("exercise"), status_label("x" * 500), status_label(None)
    ('exercise', 'unknown', 'unknown')
    """
    value = status.value if isinstance(status, Status) else status
    return value if isinstance(value, str) and value in STATUS_LABELS else UNKNOWN_STATUS


class BrokerMetrics:
    """All metrics of one broker process, registered on ``registry``.

    The registry is required: pass a fresh ``CollectorRegistry()`` per broker
    (and per test). Registering two ``BrokerMetrics`` on the same registry
    raises ``ValueError`` (duplicated timeseries) rather than silently sharing.
    """

    def __init__(self, registry: CollectorRegistry, *, version: str = __version__) -> None:
        self.registry: Final = registry
        r = registry

        self.received: Final = Counter(
            "ssr_broker_envelopes_received_total",
            "Envelopes read from ssr.submit.*, by distribution status.",
            ["status"],
            registry=r,
        )
        self.accepted: Final = Counter(
            "ssr_broker_envelopes_accepted_total",
            "Envelopes the policy accepted, by distribution status.",
            ["status"],
            registry=r,
        )
        self.rejected: Final = Counter(
            "ssr_broker_envelopes_rejected_total",
            "Envelopes the policy rejected, by reason code and distribution status.",
            ["reason", "status"],
            registry=r,
        )
        self.deliveries: Final = Counter(
            "ssr_broker_deliveries_total",
            "Deliveries published to recipients (one per recipient).",
            ["classification", "priority", "status"],
            registry=r,
        )
        self.receipts: Final = Counter(
            "ssr_broker_receipts_total",
            "Receipts verified and recorded, by kind and distribution status.",
            ["kind", "status"],
            registry=r,
        )
        self.receipts_rejected: Final = Counter(
            "ssr_broker_receipts_rejected_total",
            "Receipts refused, by reason code.",
            ["reason"],
            registry=r,
        )
        self.escalations: Final = Counter(
            "ssr_broker_escalations_total",
            "Recipients that had not confirmed delivery by the priority's deadline.",
            ["priority", "status"],
            registry=r,
        )
        self.notices: Final = Counter(
            "ssr_broker_notices_sent_total",
            "Signed notices sent back to senders, by kind.",
            ["kind"],
            registry=r,
        )
        self.requests_overdue: Final = Counter(
            "ssr_broker_requests_overdue_total",
            "Requests (RFIs) with recipients that had not answered by the deadline.",
            ["priority", "status"],
            registry=r,
        )
        self.grant_requests: Final = Counter(
            "ssr_broker_grant_requests_total",
            "Originators asked to grant a message to an actor that joined its incident.",
            ["status"],
            registry=r,
        )
        self.grants_refused: Final = Counter(
            "ssr_broker_grants_refused_total",
            "Messages a late joiner may not be granted (TLP, clearance), so nobody was asked.",
            ["status"],
            registry=r,
        )
        self.grants: Final = Counter(
            "ssr_broker_grants_total",
            "Key grants verified and delivered to late joiners.",
            ["status"],
            registry=r,
        )
        self.grants_rejected: Final = Counter(
            "ssr_broker_grants_rejected_total",
            "Key grants refused, by reason code.",
            ["reason"],
            registry=r,
        )
        self.decision_seconds: Final = Histogram(
            "ssr_broker_decision_seconds",
            "Time spent in the policy decision for one envelope.",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.routing_seconds: Final = Histogram(
            "ssr_broker_routing_seconds",
            "Submission received to every delivery acknowledged by JetStream.",
            buckets=ROUTING_BUCKETS,
            registry=r,
        )
        self.audit_events: Final = Counter(
            "ssr_broker_audit_events_total",
            "Audit events appended to the audit stream, by kind.",
            ["kind"],
            registry=r,
        )
        self.audit_checkpoints: Final = Counter(
            "ssr_broker_audit_checkpoints_total",
            "Signed checkpoints this broker sealed onto the audit stream.",
            registry=r,
        )
        self.audit_verified: Final = Gauge(
            "ssr_broker_audit_verified",
            "1 when the last verification of the audit trail found nothing wrong, 0 when it"
            " found tampering, -1 before the first verification.",
            registry=r,
        )
        self.audit_sealed_through: Final = Gauge(
            "ssr_broker_audit_sealed_through",
            "Last audit stream sequence covered by verified checkpoints.",
            registry=r,
        )
        self.nats_connected: Final = Gauge(
            "ssr_broker_nats_connected",
            "1 while the broker's NATS connection is up, else 0.",
            registry=r,
        )
        self.nats_reconnects: Final = Counter(
            "ssr_broker_nats_reconnects_total",
            "NATS reconnections.",
            registry=r,
        )
        self.nats_disconnects: Final = Counter(
            "ssr_broker_nats_disconnects_total",
            "NATS disconnections.",
            registry=r,
        )
        self.consumer_pending: Final = Gauge(
            "ssr_broker_consumer_pending_messages",
            "Messages waiting in the submission consumer, as last reported by JetStream.",
            registry=r,
        )
        self.redelivered: Final = Counter(
            "ssr_broker_consumer_redelivered_total",
            "Submissions JetStream delivered to the broker more than once.",
            registry=r,
        )
        self.directory_version: Final = Gauge(
            "ssr_broker_directory_version",
            "Version number of the signed directory in force.",
            registry=r,
        )
        self.mode: Final = Gauge(
            "ssr_broker_mode",
            "Region-wide mode: 1 for the current mode, 0 for the others.",
            ["mode"],
            registry=r,
        )
        self.open_incidents: Final = Gauge(
            "ssr_broker_open_incidents",
            "Incidents currently open, by distribution status (exercises apart from actual).",
            ["status"],
            registry=r,
        )
        self.build_info: Final = Gauge(
            "ssr_broker_build_info",
            "Always 1; the label carries the broker version.",
            ["version"],
            registry=r,
        )
        self.errors: Final = Counter(
            "ssr_broker_errors_total",
            "Unexpected internal errors, by stage.",
            ["stage"],
            registry=r,
        )

        self.build_info.labels(version=version).set(1)
        self.audit_verified.set(-1)
        # Pre-initialise the cheap, closed label sets so rate() and absent() work
        # from the first scrape. Reason codes and classifications are left to use.
        for status in STATUS_LABELS:
            self.received.labels(status=status)
            self.accepted.labels(status=status)
            for kind in RECEIPT_KINDS:
                self.receipts.labels(kind=kind, status=status)
            self.grant_requests.labels(status=status)
            self.grants_refused.labels(status=status)
            self.grants.labels(status=status)
            for priority in PRIORITIES:
                self.escalations.labels(priority=priority, status=status)
                self.requests_overdue.labels(priority=priority, status=status)
        for status in INCIDENT_STATUSES:
            self.open_incidents.labels(status=status).set(0)
        for notice in NOTICE_KINDS:
            self.notices.labels(kind=notice)
        for stage in ERROR_STAGES:
            self.errors.labels(stage=stage)
        for mode in MODES:
            self.mode.labels(mode=mode).set(0)

    def set_mode(self, mode: str) -> None:
        """Mark ``mode`` (ordinary, activated, heightened_alert) as the current one.

        Raises ``ValueError`` for a mode outside the vocabulary.
        """
        value = mode.value if isinstance(mode, Mode) else mode
        if value not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        for known in MODES:
            self.mode.labels(mode=known).set(1 if known == value else 0)

    def set_open_incidents(self, statuses: Iterable[object]) -> None:
        """Set the open-incident gauge from the statuses of the open incidents."""
        counts = Tally(status_label(s) for s in statuses)
        for status in INCIDENT_STATUSES:
            self.open_incidents.labels(status=status).set(counts.get(status, 0))

    def count_error(self, stage: ErrorStage) -> None:
        """Count one unexpected internal error at ``stage`` (one of :data:`ERROR_STAGES`).

        Raises ``ValueError`` for an unknown stage: stages are a closed set.
        """
        if stage not in ERROR_STAGES:
            raise ValueError(f"unknown error stage {stage!r}")
        self.errors.labels(stage=stage).inc()

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
