"""Errors of the transports: what Kafka (aiokafka) and the embedded log raise, in TIDM's terms.

Every message names where it happened (topic[partition]@offset, or the group) so an operator can
find the record. `Transient` errors are worth a back-off and a retry (with the same producer, or a
new one after `stop`); `Terminal` ones will fail the same way again.
"""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = [
    "CommitFailedError",
    "CorruptLogError",
    "MessageTooLargeError",
    "NotAssignedError",
    "TransportClosedError",
    "TransportConfigError",
    "TransportError",
    "TransportFailure",
    "TransportUnavailable",
    "UnknownTopicError",
]


class TransportError(TidmError):
    """Base of the transport errors."""


class TransportUnavailable(TransportError, Transient):
    """The log cannot be reached or did not answer in time (broker down, timeout, disk I/O error).

    A send that fails this way may or may not have been written: retrying can duplicate it, which
    the readers tolerate (at-least-once; batch ids make duplicates recognisable).
    """


class UnknownTopicError(TransportError, Transient):
    """The topic or partition does not exist (yet): create it, or wait for metadata to spread."""


class CommitFailedError(TransportError, Transient):
    """Offsets were not committed because the group rebalanced or this member no longer owns the
    partition. Re-read the assignment; the new owner resumes from the last committed offset."""


class NotAssignedError(TransportError, Transient):
    """The partition is not (or no longer) assigned to this consumer."""


class MessageTooLargeError(TransportError, Terminal):
    """A message is larger than the log accepts (see `base.MAX_MESSAGE_BYTES`)."""


class CorruptLogError(TransportError, Terminal):
    """Stored records fail their checksum or framing somewhere other than a torn tail."""


class TransportConfigError(TransportError, Terminal):
    """Settings, names or credentials are invalid (bad topic name, authentication refused, ...)."""


class TransportClosedError(TransportError, Terminal):
    """A producer or consumer was used before `start()` or after `stop()`."""


class TransportFailure(TransportError, Terminal):
    """The log refused an operation for a reason retrying will not fix."""
