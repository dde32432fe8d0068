"""Submit a job to Kairos from your own Python service: kafka-python for Kafka, fastavro for Avro.

Kairos reads job definitions from the compacted `<prefix>.jobs` topic. A record there is:
- key: the job id (UTF-8), so the Java-compatible murmur2 partitioner (kafka-python's default for
  keyed records) puts it in the partition where Kairos keeps the job's runs;
- value: Avro single-object encoding of a JobDefinition: the bytes C3 01, the schema's 8-byte
  CRC-64-AVRO fingerprint (little-endian), then the Avro binary datum.

The schema is the one `kairosctl schemas JobDefinition` prints (self-contained); by default this
script reads it from the repository's `schemas/` folder. Fields left out take the schema's
defaults. A definition Kairos rejects is dead-lettered with the reason on `<prefix>.deadletter`.

    pip install kafka-python fastavro
    python submit_job.py --brokers 127.0.0.1:9092 --id py-hello --every-ms 5000 -- echo hello
"""

import argparse
import io
import json
import pathlib

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from kafka import KafkaProducer

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]


def repository_schema():
    """schemas/job_definition.avsc with io.kairos.Task written out, as Kairos fingerprints it."""
    task = json.loads((REPOSITORY / "schemas/task.avsc").read_text())
    job = json.loads((REPOSITORY / "schemas/job_definition.avsc").read_text())
    for field in job["fields"]:
        if field["type"] == "io.kairos.Task":
            field["type"] = task
    return job


def single_object(schema, record):
    """C3 01, the fingerprint of the schema's Parsing Canonical Form, then the datum."""
    parsed = parse_schema(schema)
    datum = io.BytesIO()
    schemaless_writer(datum, parsed, record)
    fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return b"\xc3\x01" + bytes.fromhex(fp) + datum.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic-prefix", default="kairos")
    parser.add_argument("--schema", help="a file written by `kairosctl schemas JobDefinition`")
    parser.add_argument("--id", required=True)
    parser.add_argument("--every-ms", type=int, help="fire every N ms")
    parser.add_argument("--cron", help="or a cron expression (5 fields crontab, 6-7 Quartz)")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--pool", default="default")
    parser.add_argument("command", nargs="+", help="the program and its arguments")
    args = parser.parse_args()
    if (args.every_ms is None) == (args.cron is None):
        parser.error("give exactly one of --every-ms and --cron")

    schema = json.loads(pathlib.Path(args.schema).read_text()) if args.schema else repository_schema()
    schedule = (
        {"every_ms": args.every_ms}
        if args.every_ms is not None
        else {"cron": args.cron, "timezone": args.timezone}
    )
    job = {
        "id": args.id,
        "schedule": schedule,
        "task": {"shell": {"command": args.command}},
        "pool": args.pool,
        "timeout_ms": 60_000,
    }
    producer = KafkaProducer(bootstrap_servers=args.brokers.split(","), acks="all")
    sent = producer.send(
        f"{args.topic_prefix}.jobs", key=args.id.encode(), value=single_object(schema, job)
    ).get(timeout=30)
    producer.flush()
    print(json.dumps({"job": args.id, "topic": sent.topic, "partition": sent.partition, "offset": sent.offset}))


if __name__ == "__main__":
    main()
