"""Reads one record with confluent-kafka (librdkafka) and decodes it with the
CloudEvents Python SDK's Kafka binding; prints the event's attributes as JSON.

usage: consume.py BROKERS TOPIC PARTITION OFFSET
"""
import json
import sys

from cloudevents.v1.kafka import KafkaMessage, from_binary
from confluent_kafka import Consumer, TopicPartition

brokers, topic, partition, offset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
consumer = Consumer(
    {
        "bootstrap.servers": brokers,
        "group.id": "eda-interop",
        "enable.auto.commit": False,
    }
)
consumer.assign([TopicPartition(topic, partition, offset)])
msg = None
for _ in range(100):
    msg = consumer.poll(0.2)
    if msg is not None and msg.error() is None:
        break
consumer.close()
if msg is None or msg.error() is not None:
    sys.exit(f"no record at {topic}/{partition}@{offset}: {msg and msg.error()}")
event = from_binary(
    KafkaMessage(headers=dict(msg.headers() or []), key=msg.key(), value=msg.value()),
    data_unmarshaller=lambda b: json.loads(b),
)


def text(value):
    return value.decode() if isinstance(value, bytes) else value


print(
    json.dumps(
        {
            "id": text(event["id"]),
            "source": text(event["source"]),
            "type": text(event["type"]),
            "time": text(event["time"]),
            "key": text(msg.key()),
            "partitionkey": text(event.get("partitionkey")),
            "correlationid": text(event.get("correlationid")),
            "data": event.data,
        }
    )
)
