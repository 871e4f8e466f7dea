"""Transports: a partitioned, offset-addressed log (Kafka's model), on Kafka or in a local folder.

`KafkaTransport` needs the `kafka` extra (aiokafka); it is imported only when one is constructed.
"""

from tidm.ingest.transports.base import (
    MAX_MESSAGE_BYTES,
    Consumer,
    Delivery,
    Message,
    Producer,
    RebalanceCallback,
    TopicPartition,
    Transport,
    is_valid_topic_name,
)
from tidm.ingest.transports.embedded import EmbeddedTransport, murmur2, partition_for_key
from tidm.ingest.transports.errors import (
    CommitFailedError,
    CorruptLogError,
    MessageTooLargeError,
    NotAssignedError,
    TransportClosedError,
    TransportConfigError,
    TransportError,
    TransportFailure,
    TransportUnavailable,
    UnknownTopicError,
)
from tidm.ingest.transports.kafka import KafkaSecurity, KafkaTransport

__all__ = [
    "MAX_MESSAGE_BYTES",
    "CommitFailedError",
    "Consumer",
    "CorruptLogError",
    "Delivery",
    "EmbeddedTransport",
    "KafkaSecurity",
    "KafkaTransport",
    "Message",
    "MessageTooLargeError",
    "NotAssignedError",
    "Producer",
    "RebalanceCallback",
    "TopicPartition",
    "Transport",
    "TransportClosedError",
    "TransportConfigError",
    "TransportError",
    "TransportFailure",
    "TransportUnavailable",
    "UnknownTopicError",
    "is_valid_topic_name",
    "murmur2",
    "partition_for_key",
]
