"""The Avro oracles for Kairos's wire format (used by services/runtime/tests/avro_oracles.rs):
fastavro, and the official Python library of the Apache Avro project.

Reads one JSON object from stdin, {"RECORD NAME": {"schema": "schemas/FILE.avsc", "bytes": HEX}},
where the bytes are a record Kairos wrote (Avro single-object encoding). For each record, from
the schema file alone: fastavro's fingerprint of the schema's Parsing Canonical Form, whether the
record carries it, the datum decoded, and the same datum encoded again under that fingerprint, by
fastavro and by the official library. Writes {"RECORD NAME": {"fingerprint": HEX, "reencoded":
HEX, "reencoded_official": HEX}} or {"error": ...}. (The official library's own fingerprint keeps
`logicalType`, like the Rust crate's did, so its bytes are framed with fastavro's.)
A query may give the schema itself instead of a path, and no bytes: then only the fingerprint.
"""

import io
import json
import pathlib
import sys

import avro.io
import avro.schema
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = b"\xc3\x01"


def inline_task(schema, task):
    """The schema with its reference to io.kairos.Task replaced by Task's definition, as Kairos
    embeds it: the fingerprint is taken of the whole, self-contained schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "io.kairos.Task" and "name" in schema:
            return {**schema, "type": task}
        return {key: inline_task(value, task) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline_task(item, task) for item in schema]
    return schema


def official_round_trip(schema_json, datum, marker):
    """Decodes the datum with the official library and encodes it again after `marker`."""
    schema = avro.schema.parse(json.dumps(schema_json))
    record = avro.io.DatumReader(schema, schema).read(avro.io.BinaryDecoder(io.BytesIO(datum)))
    out = io.BytesIO()
    out.write(marker)
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(out))
    return out.getvalue().hex()


def self_contained(schema):
    if isinstance(schema, dict):
        return schema
    task = json.loads((ROOT / "schemas/task.avsc").read_text())
    return inline_task(json.loads((ROOT / schema).read_text()), task)


def load(schema):
    """A schema file's path, or a schema already self-contained (as `kairosctl schemas` prints it)."""
    if isinstance(schema, dict):
        return parse_schema(schema)
    task = json.loads((ROOT / "schemas/task.avsc").read_text())
    return parse_schema(inline_task(json.loads((ROOT / schema).read_text()), task))


def check(schema_path, hex_bytes):
    schema = load(schema_path)
    fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    if hex_bytes is None:
        return {"fingerprint": fp}
    data = bytes.fromhex(hex_bytes)
    if data[:2] != MARKER:
        return {"error": "no single-object marker"}
    if data[2:10].hex() != fp:
        return {"error": f"written with fingerprint {data[2:10].hex()}, fastavro computes {fp}"}
    record = schemaless_reader(io.BytesIO(data[10:]), schema)
    out = io.BytesIO()
    out.write(MARKER + bytes.fromhex(fp))
    schemaless_writer(out, schema, record)
    official = official_round_trip(self_contained(schema_path), data[10:], data[:10])
    return {"fingerprint": fp, "reencoded": out.getvalue().hex(), "reencoded_official": official}


def main():
    queries = json.load(sys.stdin)
    answers = {}
    for name, query in queries.items():
        try:
            answers[name] = check(query["schema"], query.get("bytes"))
        except Exception as error:  # every record gets an answer
            answers[name] = {"error": f"{type(error).__name__}: {error}"}
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
