"""Client library and the ``ssr`` command line for actor systems.

    from clients import Client

    async with Client.connect(servers=[...], actor="nacka", keys="nacka.key",
                              authority_key="authority.pub", state_dir="state") as client:
        handle = await client.send(groups=["kommuner"], payload={"text": "..."},
                                   label="INTERN", tlp="GREEN", type="situation_report")
        await handle.accepted()
        async for message in client.messages():
            await message.acknowledge()

Everything public is listed in ``__all__`` (a test keeps it so); see
``docs/integrating.md`` for a complete actor system.
"""

from broker.core import (
    Control,
    IncidentEntry,
    Label,
    MessageType,
    Mode,
    PressStage,
    Priority,
    ReceiptKind,
    Reference,
    ReferenceKind,
    Status,
    Tlp,
)

from ._crisis import (
    ImportResult,
    PressComment,
    PressLine,
    RequestStatus,
    SituationEntry,
    SituationPicture,
)
from ._errors import (
    AddressError,
    BundleFileError,
    BundleRefused,
    ClientError,
    ClosedError,
    ConfigurationError,
    DeliveryTimeout,
    DirectoryRefused,
    Expired,
    ForwardRefused,
    OutboxError,
    OutboxFull,
    Rejected,
    SendError,
    StoreError,
    Unavailable,
)
from ._handles import MessageStatus, RecipientStatus, SendHandle, SendState
from ._message import Message
from .client import Client

__all__ = [
    "AddressError",
    "BundleFileError",
    "BundleRefused",
    "Client",
    "ClientError",
    "ClosedError",
    "ConfigurationError",
    "Control",
    "DeliveryTimeout",
    "DirectoryRefused",
    "Expired",
    "ForwardRefused",
    "ImportResult",
    "IncidentEntry",
    "Label",
    "Message",
    "MessageStatus",
    "MessageType",
    "Mode",
    "OutboxError",
    "OutboxFull",
    "PressComment",
    "PressLine",
    "PressStage",
    "Priority",
    "ReceiptKind",
    "RecipientStatus",
    "Reference",
    "ReferenceKind",
    "Rejected",
    "RequestStatus",
    "SendError",
    "SendHandle",
    "SendState",
    "SituationEntry",
    "SituationPicture",
    "Status",
    "StoreError",
    "Tlp",
    "Unavailable",
]
