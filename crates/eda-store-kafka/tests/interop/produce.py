"""Writes one event with the CloudEvents Python SDK's Kafka binding (binary mode)
through confluent-kafka (librdkafka); prints the event's id.

usage: produce.py BROKERS TOPIC PARTITION
"""
import json
import sys
import uuid

from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import to_binary
from confluent_kafka import Producer

brokers, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
event_id = str(uuid.uuid4())
event = CloudEvent(
    {
        "id": event_id,
        "source": "python-sdk",
        "type": "order.created",
        "time": "2026-11-28T12:00:00.123Z",
        "datacontenttype": "application/json",
        "partitionkey": "cust-9",
        "tenant": "acme",
    },
    {"order_id": 9},
)
message = to_binary(event, data_marshaller=lambda d: json.dumps(d).encode())
producer = Producer({"bootstrap.servers": brokers})
producer.produce(
    topic,
    key=message.key,
    value=message.value,
    headers=list(message.headers.items()),
    partition=partition,
)
if producer.flush(10) != 0:
    sys.exit("the record was not delivered")
print(event_id)
