#!/usr/bin/env python3
"""Reads Tally's Kafka topics with a client Tally did not write (confluent-kafka, librdkafka)
and prints each record as a CloudEvent: key, headers and data. Exits 1 if a record is not a
well-formed CloudEvent in the Kafka binding's binary mode.

    pip install confluent-kafka
    scripts/read-topics.py --brokers 127.0.0.1:9092 [--namespace tally] [--expect N]
"""
import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException

REQUIRED = ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--namespace", default="tally")
    parser.add_argument("--expect", type=int, default=0,
                        help="wait until at least this many records were read")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        # A throwaway group: reading never moves the offsets of Tally's own groups.
        "group.id": f"reader-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    topics = [f"{args.namespace}.{c}" for c in ("catalog", "inventory", "order")]
    consumer.subscribe(topics)
    read, problems, deadline = 0, [], time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and (args.expect == 0 or read < args.expect):
            message = consumer.poll(0.5)
            if message is None:
                if args.expect == 0 and read > 0:
                    break
                continue
            if message.error():
                raise KafkaException(message.error())
            read += 1
            headers = {k: v.decode() for k, v in (message.headers() or [])}
            missing = [h for h in REQUIRED if h not in headers]
            if missing or headers.get("ce_specversion") != "1.0" or message.key() is None:
                problems.append(f"{message.topic()}/{message.partition()}@{message.offset()}: "
                                f"missing {missing or 'key'}")
            data = json.loads(message.value())
            if not args.quiet:
                print(json.dumps({
                    "topic": message.topic(), "partition": message.partition(),
                    "offset": message.offset(), "key": message.key().decode(),
                    "headers": headers, "data": data,
                }))
    finally:
        consumer.close()
    print(f"{read} records read, {len(problems)} malformed", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems or read < args.expect else 0)


if __name__ == "__main__":
    main()
