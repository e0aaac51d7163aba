"""The closed vocabularies of the protocol: message types, priorities, statuses, modes."""

from __future__ import annotations

from enum import StrEnum


class MessageType(StrEnum):
    """What an envelope is for; the first seven follow the five shared capabilities."""

    ALERT = "alert"  # automated or manual alert (Aktivera)
    ACTIVATION = "activation"  # opens an incident (Aktivera)
    SITUATION_REPORT = "situation_report"  # lägesbild (Informationsleda)
    COORDINATION = "coordination"  # Samordna
    DIRECTION = "direction"  # inriktning (Inrikta)
    COMMUNICATION = "communication"  # press lines, public messages
    REQUEST = "request"  # request for information
    RECEIPT = "receipt"  # reserved; receipts travel as their own signed frames
    MODE_CHANGE = "mode_change"  # control: region-wide mode
    INCIDENT_CLOSE = "incident_close"  # control: closes an incident
    RELABEL = "relabel"  # control: changes the label of earlier traffic


CONTROL_TYPES = frozenset(
    {MessageType.MODE_CHANGE, MessageType.INCIDENT_CLOSE, MessageType.RELABEL}
)


class Priority(StrEnum):
    ROUTINE = "routine"
    PRIORITY = "priority"
    IMMEDIATE = "immediate"
    FLASH = "flash"


class Status(StrEnum):
    """Distribution status: exercise and test traffic never pass as actual."""

    ACTUAL = "actual"
    EXERCISE = "exercise"
    TEST = "test"


class Mode(StrEnum):
    """Region-wide operating mode (ordinarie läge, aktiverat läge, höjd beredskap)."""

    ORDINARY = "ordinary"
    ACTIVATED = "activated"
    HEIGHTENED_ALERT = "heightened_alert"


class ReferenceKind(StrEnum):
    """How an envelope relates to an earlier one."""

    REPLY = "reply"
    UPDATE = "update"
    CANCEL = "cancel"
    FORWARD = "forward"


class Role(StrEnum):
    """Roles an actor may hold in the directory; the policy grants rights to roles."""

    AUTHORITY = "authority"  # the coordination office / Länsstyrelsen
    ACTIVATOR = "activator"  # may open incidents (an actor's TiB function)
    ADAPTER = "adapter"  # an automated alert source
    MEMBER = "member"  # every actor; implicit
