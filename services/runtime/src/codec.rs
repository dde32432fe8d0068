//! The Avro edge: domain types to and from Avro single-object encoding.
//!
//! The `.avsc` files in `schemas/` are the contract; they are embedded here at build time. A value
//! on the wire is `C3 01`, the 8-byte CRC-64-AVRO fingerprint of its writer schema, then the Avro
//! binary datum. Readers look the writer schema up by fingerprint and resolve it to the schema they
//! know, so schemas can evolve in backward-compatible steps. This is the only module that knows
//! Avro; a decode error is a reason to dead-letter the record, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::NaiveDate;
use kairos_core::calendar::{CalendarSpec, DateRange};
use kairos_core::job::{
    Backoff, HandlerTask, HttpTask, JobSpec, MisfireKind, MisfirePolicy, OverlapPolicy,
    RetryPolicy, ScheduleSpec, ShellTask, TaskSpec,
};
use kairos_core::run::{
    RunEvent, RunEventKind, RunId, ShardOf, SkipReason, TaskOutput, TriggerKind,
};
use kairos_core::secrets::SecretRef;
use kairos_core::signing::Signature;
use kairos_core::{
    from_millis, to_millis, CancelRequest, DstGap, JobDefinition, JobId, ShardAssignment,
    TaskAssigned, Timestamp, ValidationError,
};

/// The largest value Kairos writes or accepts; larger records are dead-lettered, not truncated.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

const MAGIC: [u8; 2] = [0xC3, 0x01];

const TASK_AVSC: &str = include_str!("../../../schemas/task.avsc");
const JOB_DEFINITION_AVSC: &str = include_str!("../../../schemas/job_definition.avsc");
const RUN_EVENT_AVSC: &str = include_str!("../../../schemas/run_event.avsc");
const TASK_ASSIGNED_AVSC: &str = include_str!("../../../schemas/task_assigned.avsc");
const TRIGGER_STATE_AVSC: &str = include_str!("../../../schemas/trigger_state.avsc");
const DEAD_LETTER_AVSC: &str = include_str!("../../../schemas/dead_letter.avsc");
const CONTROL_AVSC: &str = include_str!("../../../schemas/control.avsc");
const ALERT_AVSC: &str = include_str!("../../../schemas/alert.avsc");
const HEARTBEAT_AVSC: &str = include_str!("../../../schemas/worker_heartbeat.avsc");
const JOB_STATUS_AVSC: &str = include_str!("../../../schemas/job_status.avsc");
/// Versions released before the current one, kept so that records written with them still decode.
/// Every released version of a record that holds a task was written with task v1.
const TASK_V1_AVSC: &str = include_str!("../../../schemas/released/task.v1.avsc");
const JOB_DEFINITION_V2_AVSC: &str =
    include_str!("../../../schemas/released/job_definition.v2.avsc");
const TASK_ASSIGNED_V3_AVSC: &str = include_str!("../../../schemas/released/task_assigned.v3.avsc");
const JOB_DEFINITION_V1_AVSC: &str =
    include_str!("../../../schemas/released/job_definition.v1.avsc");
const RUN_EVENT_V1_AVSC: &str = include_str!("../../../schemas/released/run_event.v1.avsc");
const RUN_EVENT_V2_AVSC: &str = include_str!("../../../schemas/released/run_event.v2.avsc");
const RUN_EVENT_V3_AVSC: &str = include_str!("../../../schemas/released/run_event.v3.avsc");
const TASK_ASSIGNED_V1_AVSC: &str = include_str!("../../../schemas/released/task_assigned.v1.avsc");
const TASK_ASSIGNED_V2_AVSC: &str = include_str!("../../../schemas/released/task_assigned.v2.avsc");
const ALERT_V1_AVSC: &str = include_str!("../../../schemas/released/alert.v1.avsc");
const ALERT_V2_AVSC: &str = include_str!("../../../schemas/released/alert.v2.avsc");

/// Why bytes could not become a domain value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not Avro single-object encoding (expected the C3 01 marker and a fingerprint)")]
    NotSingleObject,
    #[error("written with unknown schema fingerprint {0} (expected {1})")]
    UnknownSchema(String, &'static str),
    #[error("Avro: {0}")]
    Avro(String),
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("invalid job definition: {0}")]
    Invalid(#[from] ValidationError),
    #[error("record is {0} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge(usize),
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(e.to_string())
    }
}

/// One schema of the contract, with its wire fingerprint, and the earlier versions it reads.
struct Contract {
    name: &'static str,
    /// The schema file with the shared types it references written out, as clients need it.
    json: serde_json::Value,
    schema: Schema,
    fingerprint: Vec<u8>,
    /// Released earlier versions, and fingerprints written before they followed the
    /// specification: their records resolve to `schema`.
    earlier: Vec<(Vec<u8>, Schema)>,
}

/// The primitive types, whose `{"type": ...}` object form is their name alone in canonical form.
const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The schema's Parsing Canonical Form exactly as the Avro specification defines it, as Java's
/// `SchemaNormalization` and fastavro compute it.
///
/// apache-avro 0.20 strips `logicalType` but keeps the object it stood in, so
/// `{"type": "long", "logicalType": "timestamp-millis"}` becomes `{"type":"long"}` where the
/// specification's [PRIMITIVES] rule asks for `"long"` (AVRO-4004); this finishes the rule.
fn canonical_form(schema: &Schema) -> String {
    PRIMITIVES
        .iter()
        .fold(schema.canonical_form(), |form, primitive| {
            form.replace(
                &format!("{{\"type\":\"{primitive}\"}}"),
                &format!("\"{primitive}\""),
            )
        })
}

/// The CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, little-endian, as the
/// single-object encoding carries it.
fn fingerprint(schema: &Schema) -> Vec<u8> {
    use digest::Digest;
    Rabin::digest(canonical_form(schema).as_bytes()).to_vec()
}

struct Contracts {
    job: Contract,
    run_event: Contract,
    task_assigned: Contract,
    trigger_state: Contract,
    dead_letter: Contract,
    control: Contract,
    alert: Contract,
    heartbeat: Contract,
    job_status: Contract,
}

static CONTRACTS: LazyLock<Contracts> = LazyLock::new(|| {
    // No string, bytes or array of a record can be longer than the record: a length past that
    // is a crafted or corrupt record, refused before anything that size is allocated. (Every
    // decode goes through CONTRACTS first, as the crate asks of this once-only setting.)
    apache_avro::max_allocation_bytes(MAX_RECORD_BYTES);
    let task: serde_json::Value =
        serde_json::from_str(TASK_AVSC).expect("schemas/task.avsc is JSON");
    let task_v1: serde_json::Value =
        serde_json::from_str(TASK_V1_AVSC).expect("schemas/released/task.v1.avsc is JSON");
    let with_task = |avsc: &str, task: &serde_json::Value| {
        let mut json: serde_json::Value =
            serde_json::from_str(avsc).expect("embedded schema is JSON");
        inline_named(&mut json, "io.kairos.Task", task);
        json
    };
    let self_contained = |avsc: &str| with_task(avsc, &task);
    let parse_json = |name: &'static str, json: &serde_json::Value| {
        Schema::parse(json).unwrap_or_else(|e| panic!("embedded schema {name} is invalid: {e}"))
    };
    let parse = |name: &'static str, avsc: &str| parse_json(name, &self_contained(avsc));
    let evolved = |name: &'static str, avsc: &str, earlier: &[&str]| {
        let schema = parse(name, avsc);
        // Every version is read under its specification fingerprint and under the one Kairos
        // wrote before it followed the specification (the apache-avro crate's own), so topics
        // written until then still decode.
        let versions = std::iter::once(schema.clone()).chain(
            earlier
                .iter()
                .map(|a| parse_json(name, &with_task(a, &task_v1))),
        );
        let mut readable: Vec<(Vec<u8>, Schema)> = vec![];
        for version in versions {
            for fingerprint in [fingerprint(&version), version.fingerprint::<Rabin>().bytes] {
                if !readable.iter().any(|(known, _)| *known == fingerprint) {
                    readable.push((fingerprint, version.clone()));
                }
            }
        }
        let current = fingerprint(&schema);
        readable.retain(|(known, _)| *known != current);
        Contract {
            name,
            json: self_contained(avsc),
            schema,
            fingerprint: current,
            earlier: readable,
        }
    };
    let contract = |name: &'static str, avsc: &str| evolved(name, avsc, &[]);
    Contracts {
        job: evolved(
            "JobDefinition",
            JOB_DEFINITION_AVSC,
            &[JOB_DEFINITION_V2_AVSC, JOB_DEFINITION_V1_AVSC],
        ),
        run_event: evolved(
            "RunEvent",
            RUN_EVENT_AVSC,
            &[RUN_EVENT_V3_AVSC, RUN_EVENT_V2_AVSC, RUN_EVENT_V1_AVSC],
        ),
        task_assigned: evolved(
            "TaskAssigned",
            TASK_ASSIGNED_AVSC,
            &[
                TASK_ASSIGNED_V3_AVSC,
                TASK_ASSIGNED_V2_AVSC,
                TASK_ASSIGNED_V1_AVSC,
            ],
        ),
        trigger_state: contract("TriggerState", TRIGGER_STATE_AVSC),
        dead_letter: contract("DeadLetter", DEAD_LETTER_AVSC),
        control: contract("ControlCommand", CONTROL_AVSC),
        alert: evolved("Alert", ALERT_AVSC, &[ALERT_V2_AVSC, ALERT_V1_AVSC]),
        heartbeat: contract("WorkerHeartbeat", HEARTBEAT_AVSC),
        job_status: contract("JobStatus", JOB_STATUS_AVSC),
    }
});

/// A schema of the wire contract as a client producing or consuming Kairos's records needs it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WireSchema {
    /// The record's name, as `kairosctl schemas NAME` takes it: `JobDefinition`, `RunEvent` ...
    pub name: &'static str,
    /// The schema, self-contained: the shared types it references are written out.
    pub schema: serde_json::Value,
    /// The fingerprint Kairos writes after `C3 01`, as the 8 bytes in hex.
    pub fingerprint: String,
}

/// Every schema of the wire contract with the fingerprint Kairos writes.
pub fn wire_schemas() -> Vec<WireSchema> {
    let c = &*CONTRACTS;
    [
        &c.job,
        &c.run_event,
        &c.task_assigned,
        &c.trigger_state,
        &c.dead_letter,
        &c.control,
        &c.alert,
        &c.heartbeat,
        &c.job_status,
    ]
    .into_iter()
    .map(|contract| WireSchema {
        name: contract.name,
        schema: contract.json.clone(),
        fingerprint: hex::encode(&contract.fingerprint),
    })
    .collect()
}

/// Replaces a reference to a shared named type by its definition, so that each embedded schema is
/// self-contained (and its fingerprint is that of the full schema, as the Avro spec asks).
fn inline_named(json: &mut serde_json::Value, name: &str, definition: &serde_json::Value) {
    match json {
        serde_json::Value::Object(map) => {
            if map.get("type").and_then(|t| t.as_str()) == Some(name) && map.contains_key("name") {
                map.insert("type".into(), definition.clone());
                return;
            }
            map.values_mut()
                .for_each(|v| inline_named(v, name, definition));
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|v| inline_named(v, name, definition)),
        _ => {}
    }
}

fn encode(contract: &Contract, value: Value) -> Result<Vec<u8>, CodecError> {
    let value = value.resolve(&contract.schema)?;
    let datum = apache_avro::to_avro_datum(&contract.schema, value)?;
    let mut out = Vec::with_capacity(10 + datum.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&contract.fingerprint);
    out.extend_from_slice(&datum);
    if out.len() > MAX_RECORD_BYTES {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

fn decode(contract: &Contract, bytes: &[u8]) -> Result<Value, CodecError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (header, mut datum) = bytes
        .split_at_checked(10)
        .ok_or(CodecError::NotSingleObject)?;
    if header[..2] != MAGIC {
        return Err(CodecError::NotSingleObject);
    }
    let fingerprint = &header[2..];
    let value = if fingerprint == contract.fingerprint {
        apache_avro::from_avro_datum(&contract.schema, &mut datum, None)?
    } else {
        // A record written with an earlier version: read with that writer schema, resolved to
        // the current one (new fields take their defaults).
        let (_, writer) = contract
            .earlier
            .iter()
            .find(|(earlier, _)| earlier == fingerprint)
            .ok_or_else(|| CodecError::UnknownSchema(hex::encode(fingerprint), contract.name))?;
        apache_avro::from_avro_datum(writer, &mut datum, Some(&contract.schema))?
    };
    if !datum.is_empty() {
        return Err(CodecError::Avro(format!(
            "{} trailing bytes after the record",
            datum.len()
        )));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Building and reading Avro values.

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn string(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn opt<T>(value: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    value.map_or(Value::Null, f)
}

fn millis(t: Timestamp) -> Value {
    Value::TimestampMillis(to_millis(t))
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::Map(map.iter().map(|(k, v)| (k.clone(), string(v))).collect())
}

fn secret_map(map: &BTreeMap<String, SecretRef>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, r)| {
                let secret = record(vec![
                    ("secret", string(&r.secret)),
                    ("prefix", string(&r.prefix)),
                ]);
                (k.clone(), secret)
            })
            .collect(),
    )
}

fn signature_value(signature: &Option<Signature>) -> Value {
    opt(signature.as_ref(), |s| {
        record(vec![
            ("key_id", string(&s.key_id)),
            ("value", string(&s.value)),
        ])
    })
}

fn duration_ms(d: Duration) -> Value {
    Value::Long(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The fields of a decoded record, looked up by name.
struct Fields<'a>(HashMap<&'a str, &'a Value>);

impl<'a> Fields<'a> {
    fn of(value: &'a Value, what: &'static str) -> Result<Self, CodecError> {
        match value {
            Value::Record(fields) => Ok(Fields(
                fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            )),
            other => Err(CodecError::Field {
                field: what,
                reason: format!("expected a record, got {other:?}"),
            }),
        }
    }

    /// The field's value with any union wrapper removed; `None` when absent or null.
    fn get(&self, field: &'static str) -> Option<&'a Value> {
        let mut value = *self.0.get(field)?;
        while let Value::Union(_, inner) = value {
            value = inner;
        }
        (!matches!(value, Value::Null)).then_some(value)
    }

    fn required(&self, field: &'static str) -> Result<&'a Value, CodecError> {
        self.get(field).ok_or(missing(field))
    }

    fn opt_string(&self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Uuid(u)) => Ok(Some(u.to_string())),
            Some(Value::Enum(_, s)) => Ok(Some(s.clone())),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected a string, got {other:?}"),
            }),
        }
    }

    fn string(&self, field: &'static str) -> Result<String, CodecError> {
        self.opt_string(field)?.ok_or(missing(field))
    }

    fn opt_long(&self, field: &'static str) -> Result<Option<i64>, CodecError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Long(n) | Value::TimestampMillis(n)) => Ok(Some(*n)),
            Some(Value::Int(n)) => Ok(Some(i64::from(*n))),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected a number, got {other:?}"),
            }),
        }
    }

    /// A duration written as milliseconds; a negative one is refused.
    fn opt_duration_ms(&self, field: &'static str) -> Result<Option<Duration>, CodecError> {
        self.opt_long(field)?
            .map(|ms| u64::try_from(ms).map(Duration::from_millis))
            .transpose()
            .map_err(|_| CodecError::Field {
                field,
                reason: "negative".into(),
            })
    }

    fn long(&self, field: &'static str) -> Result<i64, CodecError> {
        self.opt_long(field)?.ok_or(missing(field))
    }

    fn opt_int(&self, field: &'static str) -> Result<Option<i32>, CodecError> {
        self.opt_long(field)?
            .map(|n| {
                i32::try_from(n).map_err(|_| CodecError::Field {
                    field,
                    reason: format!("{n} is out of range"),
                })
            })
            .transpose()
    }

    fn attempt(&self) -> Result<u32, CodecError> {
        self.opt_u32("attempt")?.ok_or(missing("attempt"))
    }

    fn opt_u32(&self, field: &'static str) -> Result<Option<u32>, CodecError> {
        self.opt_long(field)?
            .map(|n| {
                u32::try_from(n).map_err(|_| CodecError::Field {
                    field,
                    reason: format!("{n} is not an attempt number"),
                })
            })
            .transpose()
    }

    fn timestamp(&self, field: &'static str) -> Result<Timestamp, CodecError> {
        self.opt_timestamp(field)?.ok_or(missing(field))
    }

    fn opt_timestamp(&self, field: &'static str) -> Result<Option<Timestamp>, CodecError> {
        self.opt_long(field)?
            .map(|ms| {
                from_millis(ms).ok_or(CodecError::Field {
                    field,
                    reason: format!("{ms} is out of range"),
                })
            })
            .transpose()
    }

    fn strings(&self, field: &'static str) -> Result<Vec<String>, CodecError> {
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(CodecError::Field {
                        field,
                        reason: format!("expected strings, got {other:?}"),
                    }),
                })
                .collect(),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected an array, got {other:?}"),
            }),
        }
    }

    /// The items of an array field; none when absent (written before the field existed).
    fn array(&self, field: &'static str) -> Result<&'a [Value], CodecError> {
        match self.get(field) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected an array, got {other:?}"),
            }),
        }
    }

    fn string_map(&self, field: &'static str) -> Result<BTreeMap<String, String>, CodecError> {
        match self.get(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Map(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(CodecError::Field {
                        field,
                        reason: format!("expected strings, got {other:?}"),
                    }),
                })
                .collect(),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected a map, got {other:?}"),
            }),
        }
    }

    fn record(&self, field: &'static str) -> Result<Option<Fields<'a>>, CodecError> {
        self.get(field).map(|v| Fields::of(v, field)).transpose()
    }

    /// A map of secret references; none when absent (written before the field existed).
    fn secret_map(&self, field: &'static str) -> Result<BTreeMap<String, SecretRef>, CodecError> {
        match self.get(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Map(map)) => map
                .iter()
                .map(|(k, v)| {
                    let r = Fields::of(v, field)?;
                    Ok((
                        k.clone(),
                        SecretRef {
                            secret: r.string("secret")?,
                            prefix: r.opt_string("prefix")?.unwrap_or_default(),
                        },
                    ))
                })
                .collect(),
            Some(other) => Err(CodecError::Field {
                field,
                reason: format!("expected a map, got {other:?}"),
            }),
        }
    }

    /// The writer's signature; none when absent (unsigned, or written before the field existed).
    fn signature(&self) -> Result<Option<Signature>, CodecError> {
        self.record("signature")?
            .map(|s| {
                Ok(Signature {
                    key_id: s.string("key_id")?,
                    value: s.string("value")?,
                })
            })
            .transpose()
    }
}

fn missing(field: &'static str) -> CodecError {
    CodecError::Field {
        field,
        reason: "missing".into(),
    }
}

fn job_id(value: String) -> Result<JobId, CodecError> {
    Ok(JobId::parse(&value)?)
}

fn run_id(value: &str) -> Result<RunId, CodecError> {
    RunId::parse(value).ok_or(CodecError::Field {
        field: "run_id",
        reason: format!("{value:?} is not a UUID"),
    })
}

// ---------------------------------------------------------------------------------------------
// Task (shared by JobDefinition and TaskAssigned).

fn task_value(task: &TaskSpec) -> Value {
    let (mut shell, mut http, mut handler) = (Value::Null, Value::Null, Value::Null);
    match task {
        TaskSpec::Shell(s) => {
            shell = record(vec![
                (
                    "command",
                    Value::Array(s.command.iter().map(string).collect()),
                ),
                ("env", string_map(&s.env)),
                ("working_dir", opt(s.working_dir.clone(), string)),
                ("env_from", secret_map(&s.env_from)),
            ]);
        }
        TaskSpec::Http(h) => {
            http = record(vec![
                ("method", string(&h.method)),
                ("url", string(&h.url)),
                ("headers", string_map(&h.headers)),
                ("body", opt(h.body.clone(), string)),
                (
                    "expected_status",
                    Value::Array(
                        h.expected_status
                            .iter()
                            .map(|s| Value::Int(i32::from(*s)))
                            .collect(),
                    ),
                ),
                ("headers_from", secret_map(&h.headers_from)),
            ]);
        }
        TaskSpec::Handler(h) => {
            handler = record(vec![
                ("name", string(&h.name)),
                ("params", string(h.params.to_string())),
            ]);
        }
    }
    record(vec![("shell", shell), ("http", http), ("handler", handler)])
}

fn task_from(fields: &Fields<'_>) -> Result<TaskSpec, CodecError> {
    let task = Fields::of(fields.required("task")?, "task")?;
    match (
        task.record("shell")?,
        task.record("http")?,
        task.record("handler")?,
    ) {
        (Some(shell), None, None) => Ok(TaskSpec::Shell(ShellTask {
            command: shell.strings("command")?,
            env: shell.string_map("env")?,
            env_from: shell.secret_map("env_from")?,
            working_dir: shell.opt_string("working_dir")?,
        })),
        (None, Some(http), None) => Ok(TaskSpec::Http(HttpTask {
            method: http.string("method")?,
            url: http.string("url")?,
            headers: http.string_map("headers")?,
            headers_from: http.secret_map("headers_from")?,
            body: http.opt_string("body")?,
            expected_status: match http.get("expected_status") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::Int(n) => {
                            u16::try_from(*n).map_err(|_| format!("{n} is not a status"))
                        }
                        other => Err(format!("expected ints, got {other:?}")),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|reason| CodecError::Field {
                        field: "task.http.expected_status",
                        reason,
                    })?,
                _ => vec![],
            },
        })),
        (None, None, Some(handler)) => Ok(TaskSpec::Handler(HandlerTask {
            name: handler.string("name")?,
            params: serde_json::from_str(&handler.string("params")?).map_err(|e| {
                CodecError::Field {
                    field: "task.handler.params",
                    reason: format!("not JSON: {e}"),
                }
            })?,
        })),
        _ => Err(CodecError::Field {
            field: "task",
            reason: "exactly one of shell, http or handler must be set".into(),
        }),
    }
}

fn timeout_from(fields: &Fields<'_>) -> Result<Option<Duration>, CodecError> {
    fields.opt_duration_ms("timeout_ms")
}

// ---------------------------------------------------------------------------------------------
// JobDefinition.

/// Encodes a validated job definition.
pub fn encode_job(job: &JobDefinition) -> Result<Vec<u8>, CodecError> {
    let spec = job.to_spec();
    encode(
        &CONTRACTS.job,
        record(vec![
            ("id", string(spec.id)),
            ("description", opt(spec.description, string)),
            ("schedule", schedule_value(&spec.schedule)),
            ("task", task_value(&spec.task)),
            ("pool", string(spec.pool)),
            ("timeout_ms", opt(spec.timeout, duration_ms)),
            ("misfire", misfire_value(&spec.misfire)),
            ("retry", retry_value(&spec.retry)),
            ("overlap", symbol(&OVERLAP_SYMBOLS, spec.overlap.as_str())),
            ("paused", Value::Boolean(spec.paused)),
            ("start_at", opt(spec.start_at, millis)),
            ("end_at", opt(spec.end_at, millis)),
            ("max_runs", opt(spec.max_runs, int)),
            ("jitter_ms", opt(spec.jitter, duration_ms)),
            ("priority", Value::Int(spec.priority)),
            ("shards", int(job.shards)),
            (
                "shard_params",
                Value::Array(job.shard_params.iter().map(string).collect()),
            ),
            (
                "more_schedules",
                Value::Array(spec.more_schedules.iter().map(schedule_value).collect()),
            ),
            (
                "calendars",
                Value::Array(spec.calendars.iter().map(calendar_value).collect()),
            ),
            ("signature", signature_value(&spec.signature)),
        ]),
    )
}

const DST_GAP_SYMBOLS: [&str; 2] = ["run_after", "skip"];
const WEEKDAY_SYMBOLS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn schedule_value(schedule: &ScheduleSpec) -> Value {
    record(vec![
        ("cron", opt(schedule.cron.clone(), string)),
        ("timezone", opt(schedule.timezone.clone(), string)),
        ("every_ms", opt(schedule.every, duration_ms)),
        ("at", opt(schedule.at, millis)),
        (
            "dst_gap",
            symbol(&DST_GAP_SYMBOLS, schedule.dst_gap.as_str()),
        ),
    ])
}

fn schedule_from(value: &Value, what: &'static str) -> Result<ScheduleSpec, CodecError> {
    let schedule = Fields::of(value, what)?;
    Ok(ScheduleSpec {
        cron: schedule.opt_string("cron")?,
        timezone: schedule.opt_string("timezone")?,
        every: schedule.opt_duration_ms("every_ms")?,
        at: schedule.opt_timestamp("at")?,
        dst_gap: schedule
            .opt_string("dst_gap")?
            .map(|name| name.parse::<DstGap>())
            .transpose()
            .map_err(|reason| CodecError::Field {
                field: "schedule.dst_gap",
                reason,
            })?
            .unwrap_or_default(),
    })
}

/// Days since the Unix epoch, as Avro's `date` carries them.
fn date_value(day: NaiveDate) -> Value {
    let days = (day - NaiveDate::default()).num_days();
    Value::Date(i32::try_from(days).unwrap_or(i32::MAX))
}

fn calendar_value(calendar: &CalendarSpec) -> Value {
    record(vec![
        ("name", string(&calendar.name)),
        (
            "timezone",
            string(calendar.timezone.as_deref().unwrap_or("UTC")),
        ),
        (
            "dates",
            Value::Array(calendar.dates.iter().copied().map(date_value).collect()),
        ),
        (
            "ranges",
            Value::Array(
                calendar
                    .ranges
                    .iter()
                    .map(|r| record(vec![("from", date_value(r.from)), ("to", date_value(r.to))]))
                    .collect(),
            ),
        ),
        (
            "weekdays",
            Value::Array(
                calendar
                    .weekdays
                    .iter()
                    .map(|w| symbol(&WEEKDAY_SYMBOLS, &w.to_ascii_lowercase()))
                    .collect(),
            ),
        ),
    ])
}

fn calendar_from(value: &Value) -> Result<CalendarSpec, CodecError> {
    let f = Fields::of(value, "calendars")?;
    let date = |value: &Value| match value {
        Value::Date(days) | Value::Int(days) => NaiveDate::default()
            .checked_add_signed(chrono::Duration::days(i64::from(*days)))
            .ok_or(CodecError::Field {
                field: "calendars.dates",
                reason: format!("{days} is out of range"),
            }),
        other => Err(CodecError::Field {
            field: "calendars.dates",
            reason: format!("expected a date, got {other:?}"),
        }),
    };
    let dates = f
        .array("dates")?
        .iter()
        .map(date)
        .collect::<Result<_, _>>()?;
    let ranges = f
        .array("ranges")?
        .iter()
        .map(|range| {
            let range = Fields::of(range, "calendars.ranges")?;
            Ok(DateRange {
                from: date(range.required("from")?)?,
                to: date(range.required("to")?)?,
            })
        })
        .collect::<Result<_, CodecError>>()?;
    let weekdays = f
        .array("weekdays")?
        .iter()
        .map(|day| match day {
            Value::Enum(_, name) | Value::String(name) => Ok(name.clone()),
            other => Err(CodecError::Field {
                field: "calendars.weekdays",
                reason: format!("expected a weekday, got {other:?}"),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(CalendarSpec {
        name: f.string("name")?,
        timezone: f.opt_string("timezone")?,
        dates,
        ranges,
        weekdays,
    })
}

const MISFIRE_SYMBOLS: [&str; 3] = ["fire_once", "skip", "catch_up"];

/// The default policy is written as null, so definitions that do not set one stay as they were.
fn misfire_value(policy: &MisfirePolicy) -> Value {
    if *policy == MisfirePolicy::default() {
        return Value::Null;
    }
    record(vec![
        ("policy", symbol(&MISFIRE_SYMBOLS, policy.policy.as_str())),
        ("grace_ms", duration_ms(policy.grace)),
        ("catch_up_window_ms", duration_ms(policy.catch_up_window)),
    ])
}

/// No retries is written as null, like every other default.
fn retry_value(policy: &RetryPolicy) -> Value {
    if *policy == RetryPolicy::default() {
        return Value::Null;
    }
    let attempts = i32::try_from(policy.max_attempts).unwrap_or(i32::MAX);
    record(vec![
        ("max_attempts", Value::Int(attempts)),
        ("initial_backoff_ms", duration_ms(policy.backoff.initial)),
        ("max_backoff_ms", duration_ms(policy.backoff.max)),
        ("multiplier", Value::Double(policy.backoff.multiplier)),
        ("jitter", Value::Double(policy.backoff.jitter)),
    ])
}

fn retry_from(fields: &Fields<'_>) -> Result<RetryPolicy, CodecError> {
    let Some(retry) = fields.record("retry")? else {
        return Ok(RetryPolicy::default());
    };
    let millis = |field: &'static str| -> Result<Duration, CodecError> {
        let ms = retry.long(field)?;
        u64::try_from(ms)
            .map(Duration::from_millis)
            .map_err(|_| CodecError::Field {
                field,
                reason: format!("{ms} is negative"),
            })
    };
    let double = |field: &'static str| match retry.get(field) {
        Some(Value::Double(x)) => Ok(*x),
        other => Err(CodecError::Field {
            field,
            reason: format!("expected a double, got {other:?}"),
        }),
    };
    let attempts = retry.long("max_attempts")?;
    Ok(RetryPolicy {
        max_attempts: u32::try_from(attempts).map_err(|_| CodecError::Field {
            field: "max_attempts",
            reason: format!("{attempts} is negative"),
        })?,
        backoff: Backoff {
            initial: millis("initial_backoff_ms")?,
            max: millis("max_backoff_ms")?,
            multiplier: double("multiplier")?,
            jitter: double("jitter")?,
        },
    })
}

fn misfire_from(fields: &Fields<'_>) -> Result<MisfirePolicy, CodecError> {
    let Some(misfire) = fields.record("misfire")? else {
        return Ok(MisfirePolicy::default());
    };
    let policy = match misfire.string("policy")?.as_str() {
        "fire_once" => MisfireKind::FireOnce,
        "skip" => MisfireKind::Skip,
        "catch_up" => MisfireKind::CatchUp,
        other => {
            return Err(CodecError::Field {
                field: "misfire.policy",
                reason: format!("unknown policy {other:?}"),
            })
        }
    };
    let millis = |field: &'static str| -> Result<Duration, CodecError> {
        let ms = misfire.long(field)?;
        u64::try_from(ms)
            .map(Duration::from_millis)
            .map_err(|_| CodecError::Field {
                field,
                reason: format!("{ms} is negative"),
            })
    };
    Ok(MisfirePolicy {
        policy,
        grace: millis("grace_ms")?,
        catch_up_window: millis("catch_up_window_ms")?,
    })
}

/// Decodes and validates a job definition: anything any producer wrote must pass the same checks
/// as `kairosctl job apply`.
pub fn decode_job(bytes: &[u8]) -> Result<JobDefinition, CodecError> {
    let value = decode(&CONTRACTS.job, bytes)?;
    let f = Fields::of(&value, "JobDefinition")?;
    let spec = JobSpec {
        id: f.string("id")?,
        description: f.opt_string("description")?,
        schedule: schedule_from(f.required("schedule")?, "schedule")?,
        more_schedules: f
            .array("more_schedules")?
            .iter()
            .map(|s| schedule_from(s, "more_schedules"))
            .collect::<Result<_, _>>()?,
        calendars: f
            .array("calendars")?
            .iter()
            .map(calendar_from)
            .collect::<Result<_, _>>()?,
        task: task_from(&f)?,
        pool: f.string("pool")?,
        timeout: timeout_from(&f)?,
        misfire: misfire_from(&f)?,
        retry: retry_from(&f)?,
        overlap: match f.opt_string("overlap")?.as_deref() {
            None | Some("allow") => OverlapPolicy::Allow,
            Some("forbid") => OverlapPolicy::Forbid,
            Some("queue") => OverlapPolicy::Queue,
            Some("queue_all") => OverlapPolicy::QueueAll,
            Some("replace") => OverlapPolicy::Replace,
            Some(other) => {
                return Err(CodecError::Field {
                    field: "overlap",
                    reason: format!("unknown policy {other:?}"),
                })
            }
        },
        paused: matches!(f.get("paused"), Some(Value::Boolean(true))),
        start_at: f.opt_timestamp("start_at")?,
        end_at: f.opt_timestamp("end_at")?,
        max_runs: f
            .opt_long("max_runs")?
            .map(|n| {
                u32::try_from(n).map_err(|_| CodecError::Field {
                    field: "max_runs",
                    reason: format!("{n} is negative"),
                })
            })
            .transpose()?,
        jitter: f.opt_duration_ms("jitter_ms")?,
        priority: f.opt_int("priority")?.unwrap_or_default(),
        shards: f.opt_u32("shards")?,
        shard_params: f.strings("shard_params")?,
        signature: f.signature()?,
    };
    Ok(spec.validate()?)
}

// ---------------------------------------------------------------------------------------------
// RunEvent.

fn symbol(schema_symbols: &[&str], symbol: &str) -> Value {
    let index = schema_symbols
        .iter()
        .position(|s| *s == symbol)
        .unwrap_or_default();
    Value::Enum(u32::try_from(index).unwrap_or_default(), symbol.to_string())
}

const TRIGGER_SYMBOLS: [&str; 3] = ["schedule", "manual", "backfill"];
const OVERLAP_SYMBOLS: [&str; 5] = ["allow", "forbid", "queue", "queue_all", "replace"];
const RUN_EVENT_SYMBOLS: [&str; 11] = [
    "RunScheduled",
    "RunSkipped",
    "RunDispatched",
    "RunStarted",
    "RunSucceeded",
    "RunFailed",
    "RunTimedOut",
    "RunCancelled",
    "RunLost",
    "RetryScheduled",
    "RunAbandoned",
];

/// Encodes one run ledger event.
pub fn encode_run_event(event: &RunEvent) -> Result<Vec<u8>, CodecError> {
    use RunEventKind::*;
    let mut trigger = Value::Null;
    let mut definition_offset = Value::Null;
    let mut skip_reason = Value::Null;
    let mut pool = Value::Null;
    let mut worker = Value::Null;
    let mut error = Value::Null;
    let mut refused_by = Value::Null;
    let mut output: Option<&TaskOutput> = None;
    let mut due_at = Value::Null;
    match &event.kind {
        RunScheduled {
            trigger: t,
            definition_offset: o,
        } => {
            trigger = symbol(&TRIGGER_SYMBOLS, t.as_str());
            definition_offset = Value::Long(*o);
        }
        RunSkipped { reason } => {
            skip_reason = symbol(&SkipReason::ALL.map(SkipReason::as_str), reason.as_str());
        }
        RunDispatched { pool: p, .. } => pool = string(p),
        RunStarted { worker_id, .. } => worker = string(worker_id),
        RunSucceeded {
            worker_id,
            output: o,
            ..
        }
        | RunTimedOut {
            worker_id,
            output: o,
            ..
        } => {
            worker = string(worker_id);
            output = Some(o);
        }
        RunFailed {
            worker_id,
            error: e,
            output: o,
            refused,
            ..
        } => {
            worker = string(worker_id);
            error = string(e);
            output = Some(o);
            refused_by = opt(refused.clone(), string);
        }
        RunCancelled { .. } | RunLost { .. } | RunAbandoned { .. } => {}
        RetryScheduled { due_at: d, .. } => due_at = millis(*d),
    }
    let attempt = i32::try_from(event.kind.attempt().unwrap_or(0)).unwrap_or(i32::MAX);
    encode(
        &CONTRACTS.run_event,
        record(vec![
            ("type", symbol(&RUN_EVENT_SYMBOLS, event.kind.name())),
            ("job_id", string(event.job_id.as_str())),
            ("run_id", string(event.run_id.to_string())),
            ("scheduled_for", millis(event.scheduled_for)),
            ("at", millis(event.at)),
            ("attempt", Value::Int(attempt)),
            ("trigger", trigger),
            ("definition_offset", definition_offset),
            ("skip_reason", skip_reason),
            ("pool", pool),
            ("worker_id", worker),
            ("error", error),
            (
                "exit_code",
                opt(output.and_then(|o| o.exit_code), Value::Int),
            ),
            ("stdout", opt(output.map(|o| o.stdout.clone()), string)),
            ("stderr", opt(output.map(|o| o.stderr.clone()), string)),
            ("due_at", due_at),
            ("shard_index", opt(event.shard.map(|s| s.index), int)),
            ("shard_total", opt(event.shard.map(|s| s.total), int)),
            ("started_at", opt(output.and_then(|o| o.started_at), millis)),
            ("refused", refused_by),
        ]),
    )
}

fn int(n: u32) -> Value {
    Value::Int(i32::try_from(n).unwrap_or(i32::MAX))
}

/// Decodes one run ledger event.
pub fn decode_run_event(bytes: &[u8]) -> Result<RunEvent, CodecError> {
    let value = decode(&CONTRACTS.run_event, bytes)?;
    let f = Fields::of(&value, "RunEvent")?;
    let missing = |field: &'static str| CodecError::Field {
        field,
        reason: "missing for this event type".into(),
    };
    let worker = || {
        f.opt_string("worker_id")?
            .ok_or_else(|| missing("worker_id"))
    };
    let output = || -> Result<TaskOutput, CodecError> {
        Ok(TaskOutput {
            exit_code: f.opt_int("exit_code")?,
            stdout: f.opt_string("stdout")?.unwrap_or_default(),
            stderr: f.opt_string("stderr")?.unwrap_or_default(),
            started_at: f.opt_timestamp("started_at")?,
        })
    };
    let kind = match f.string("type")?.as_str() {
        "RunScheduled" => RunEventKind::RunScheduled {
            trigger: match f.opt_string("trigger")?.as_deref() {
                Some("manual") => TriggerKind::Manual,
                Some("backfill") => TriggerKind::Backfill,
                Some("schedule") => TriggerKind::Schedule,
                _ => return Err(missing("trigger")),
            },
            definition_offset: f
                .opt_long("definition_offset")?
                .ok_or_else(|| missing("definition_offset"))?,
        },
        "RunSkipped" => RunEventKind::RunSkipped {
            reason: {
                let reason = f.opt_string("skip_reason")?;
                SkipReason::ALL
                    .into_iter()
                    .find(|r| Some(r.as_str()) == reason.as_deref())
                    .ok_or_else(|| missing("skip_reason"))?
            },
        },
        "RunDispatched" => RunEventKind::RunDispatched {
            attempt: f.attempt()?,
            pool: f.opt_string("pool")?.ok_or_else(|| missing("pool"))?,
        },
        "RunStarted" => RunEventKind::RunStarted {
            attempt: f.attempt()?,
            worker_id: worker()?,
        },
        "RunSucceeded" => RunEventKind::RunSucceeded {
            attempt: f.attempt()?,
            worker_id: worker()?,
            output: output()?,
        },
        "RunFailed" => RunEventKind::RunFailed {
            attempt: f.attempt()?,
            worker_id: worker()?,
            error: f.opt_string("error")?.unwrap_or_default(),
            output: output()?,
            refused: f.opt_string("refused")?,
        },
        "RunTimedOut" => RunEventKind::RunTimedOut {
            attempt: f.attempt()?,
            worker_id: worker()?,
            output: output()?,
        },
        "RunCancelled" => RunEventKind::RunCancelled {
            attempt: f.attempt()?,
        },
        "RunLost" => RunEventKind::RunLost {
            attempt: f.attempt()?,
        },
        "RunAbandoned" => RunEventKind::RunAbandoned {
            attempt: f.attempt()?,
        },
        "RetryScheduled" => RunEventKind::RetryScheduled {
            attempt: f.attempt()?,
            due_at: f
                .opt_timestamp("due_at")?
                .ok_or_else(|| missing("due_at"))?,
        },
        other => {
            return Err(CodecError::Field {
                field: "type",
                reason: format!("unknown event type {other:?}"),
            })
        }
    };
    Ok(RunEvent {
        job_id: job_id(f.string("job_id")?)?,
        run_id: run_id(&f.string("run_id")?)?,
        scheduled_for: f.timestamp("scheduled_for")?,
        at: f.timestamp("at")?,
        kind,
        shard: match (f.opt_u32("shard_index")?, f.opt_u32("shard_total")?) {
            (Some(index), Some(total)) => Some(ShardOf { index, total }),
            (None, None) => None,
            _ => {
                return Err(CodecError::Field {
                    field: "shard_index",
                    reason: "shard_index and shard_total come together".into(),
                })
            }
        },
    })
}

// ---------------------------------------------------------------------------------------------
// TaskAssigned.

/// Encodes a task for a worker pool.
pub fn encode_task(task: &TaskAssigned) -> Result<Vec<u8>, CodecError> {
    encode(
        &CONTRACTS.task_assigned,
        record(vec![
            ("job_id", string(task.job_id.as_str())),
            ("run_id", string(task.run_id.to_string())),
            ("attempt", int(task.attempt)),
            ("scheduled_for", millis(task.scheduled_for)),
            ("pool", string(&task.pool)),
            ("task", task_value(&task.task)),
            ("timeout_ms", opt(task.timeout, duration_ms)),
            ("definition_offset", Value::Long(task.definition_offset)),
            ("assigned_at", millis(task.assigned_at)),
            ("start_at", opt(task.start_at, millis)),
            (
                "shard",
                opt(task.shard.as_ref(), |s| {
                    record(vec![
                        ("index", int(s.index)),
                        ("total", int(s.total)),
                        ("param", opt(s.param.clone(), string)),
                    ])
                }),
            ),
            ("concurrent_runs", Value::Boolean(task.concurrent_runs)),
            ("signature", signature_value(&task.signature)),
        ]),
    )
}

/// Decodes a task.
pub fn decode_task(bytes: &[u8]) -> Result<TaskAssigned, CodecError> {
    let value = decode(&CONTRACTS.task_assigned, bytes)?;
    let f = Fields::of(&value, "TaskAssigned")?;
    Ok(TaskAssigned {
        job_id: job_id(f.string("job_id")?)?,
        run_id: run_id(&f.string("run_id")?)?,
        attempt: f.attempt()?,
        scheduled_for: f.timestamp("scheduled_for")?,
        pool: f.string("pool")?,
        task: task_from(&f)?,
        timeout: timeout_from(&f)?,
        definition_offset: f.long("definition_offset")?,
        assigned_at: f.timestamp("assigned_at")?,
        start_at: f.opt_timestamp("start_at")?,
        shard: f
            .record("shard")?
            .map(|shard| -> Result<ShardAssignment, CodecError> {
                Ok(ShardAssignment {
                    index: shard.opt_u32("index")?.ok_or(missing("shard.index"))?,
                    total: shard.opt_u32("total")?.ok_or(missing("shard.total"))?,
                    param: shard.opt_string("param")?,
                })
            })
            .transpose()?,
        concurrent_runs: matches!(f.get("concurrent_runs"), Some(Value::Boolean(true))),
        signature: f.signature()?,
    })
}

// ---------------------------------------------------------------------------------------------
// TriggerState and DeadLetter: records that only Kairos's own services write.

/// The trigger's changelog entry: the last slot it handled for a job.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerState {
    pub job_id: JobId,
    pub last_slot: Timestamp,
    pub definition_offset: i64,
    /// The key of the schedule the slot belongs to ([`kairos_core::Schedule::key`]).
    pub schedule: String,
    /// Slots of the job that have run, for `max_runs`.
    pub fired: u32,
}

pub fn encode_trigger_state(state: &TriggerState) -> Result<Vec<u8>, CodecError> {
    encode(
        &CONTRACTS.trigger_state,
        record(vec![
            ("job_id", string(state.job_id.as_str())),
            ("last_slot", millis(state.last_slot)),
            ("definition_offset", Value::Long(state.definition_offset)),
            ("schedule", string(&state.schedule)),
            ("fired", Value::Long(i64::from(state.fired))),
        ]),
    )
}

pub fn decode_trigger_state(bytes: &[u8]) -> Result<TriggerState, CodecError> {
    let value = decode(&CONTRACTS.trigger_state, bytes)?;
    let f = Fields::of(&value, "TriggerState")?;
    Ok(TriggerState {
        job_id: job_id(f.string("job_id")?)?,
        last_slot: f.timestamp("last_slot")?,
        definition_offset: f.long("definition_offset")?,
        schedule: f.opt_string("schedule")?.unwrap_or_default(),
        fired: u32::try_from(f.opt_long("fired")?.unwrap_or_default()).unwrap_or(u32::MAX),
    })
}

/// A record a service could not use, with where it came from and why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub service: String,
    pub reason: String,
    pub payload: Option<Vec<u8>>,
    pub at: Timestamp,
}

pub fn encode_dead_letter(letter: &DeadLetter) -> Result<Vec<u8>, CodecError> {
    // The original bytes are kept whole unless they are what made the record too large.
    let keep = letter
        .payload
        .as_ref()
        .filter(|p| p.len() < MAX_RECORD_BYTES - 64 * 1024);
    encode(
        &CONTRACTS.dead_letter,
        record(vec![
            ("source_topic", string(&letter.source_topic)),
            ("source_partition", Value::Int(letter.source_partition)),
            ("source_offset", Value::Long(letter.source_offset)),
            ("service", string(&letter.service)),
            ("reason", string(&letter.reason)),
            ("payload", opt(keep.cloned(), Value::Bytes)),
            ("at", millis(letter.at)),
        ]),
    )
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    let value = decode(&CONTRACTS.dead_letter, bytes)?;
    let f = Fields::of(&value, "DeadLetter")?;
    Ok(DeadLetter {
        source_topic: f.string("source_topic")?,
        source_partition: f.opt_int("source_partition")?.unwrap_or_default(),
        source_offset: f.long("source_offset")?,
        service: f.string("service")?,
        reason: f.string("reason")?,
        payload: match f.get("payload") {
            Some(Value::Bytes(b)) => Some(b.clone()),
            _ => None,
        },
        at: f.timestamp("at")?,
    })
}

// ---------------------------------------------------------------------------------------------
// ControlCommand.

pub fn encode_cancel(request: &CancelRequest) -> Result<Vec<u8>, CodecError> {
    encode(
        &CONTRACTS.control,
        record(vec![
            ("type", symbol(&["CancelRun"], "CancelRun")),
            ("job_id", string(request.job_id.as_str())),
            ("run_id", string(request.run_id.to_string())),
            ("reason", opt(request.reason.clone(), string)),
            ("attempt", opt(request.attempt, |a| Value::Int(a as i32))),
            ("at", millis(request.at)),
        ]),
    )
}

pub fn decode_cancel(bytes: &[u8]) -> Result<CancelRequest, CodecError> {
    let value = decode(&CONTRACTS.control, bytes)?;
    let f = Fields::of(&value, "ControlCommand")?;
    match f.string("type")?.as_str() {
        "CancelRun" => Ok(CancelRequest {
            job_id: job_id(f.string("job_id")?)?,
            run_id: run_id(&f.string("run_id")?)?,
            reason: f.opt_string("reason")?,
            attempt: f.opt_u32("attempt")?,
            at: f.timestamp("at")?,
        }),
        other => Err(CodecError::Field {
            field: "type",
            reason: format!("unknown command {other:?}"),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Alert.

/// Something an operator should look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Derived from what the alert is about, so a repeated alert can be recognised.
    pub alert_id: uuid::Uuid,
    pub kind: AlertKind,
    pub job_id: Option<JobId>,
    pub run_id: Option<RunId>,
    pub worker_id: Option<String>,
    pub pool: Option<String>,
    pub message: String,
    pub at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// A run failed every attempt its retry policy allows.
    RunAbandoned,
    /// A dispatched run has waited too long for a worker: none serves its pool and task type.
    RunPending,
    /// A job's latest runs all failed.
    JobFailing,
    /// A slot was missed (nobody owned the job, or it was paused) and its misfire policy skipped it.
    Misfire,
    /// A worker stopped beating without saying it was stopping.
    WorkerLost,
    /// A pool that jobs use, or that had workers, has no live worker.
    PoolWithoutWorkers,
    /// A service dead-lettered a record it could not use.
    DeadLettered,
    /// The fire audit found a due slot of an enabled job with no decision on the ledger within
    /// the grace period.
    SlotMissed,
    /// The fire audit found a run whose next step is overdue by more than the grace period.
    RunStuck,
    /// A worker's policy refused a run's task: it never ran, and the run is not retried.
    TaskRefused,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::RunAbandoned,
        AlertKind::RunPending,
        AlertKind::JobFailing,
        AlertKind::Misfire,
        AlertKind::WorkerLost,
        AlertKind::PoolWithoutWorkers,
        AlertKind::DeadLettered,
        AlertKind::SlotMissed,
        AlertKind::RunStuck,
        AlertKind::TaskRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RunAbandoned => "run_abandoned",
            AlertKind::RunPending => "run_pending",
            AlertKind::JobFailing => "job_failing",
            AlertKind::Misfire => "misfire",
            AlertKind::WorkerLost => "worker_lost",
            AlertKind::PoolWithoutWorkers => "pool_without_workers",
            AlertKind::DeadLettered => "dead_lettered",
            AlertKind::SlotMissed => "slot_missed",
            AlertKind::RunStuck => "run_stuck",
            AlertKind::TaskRefused => "task_refused",
        }
    }
}

/// A time as alert messages write it.
fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Alert {
    /// An alert of `kind` whose id is derived from `about`: the same thing alerted twice (after a
    /// restart, or by a replay) carries the same id.
    fn new(kind: AlertKind, about: &str, message: String, at: Timestamp) -> Self {
        let name = format!("{}/{about}", kind.as_str());
        Alert {
            alert_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()),
            kind,
            job_id: None,
            run_id: None,
            worker_id: None,
            pool: None,
            message,
            at,
        }
    }

    fn about_run(
        kind: AlertKind,
        job_id: JobId,
        run_id: RunId,
        message: String,
        at: Timestamp,
    ) -> Self {
        Alert {
            job_id: Some(job_id),
            run_id: Some(run_id),
            ..Alert::new(kind, &run_id.to_string(), message, at)
        }
    }

    /// The record key on the alerts topic: what the alert is about.
    pub fn key(&self) -> &str {
        self.job_id
            .as_ref()
            .map(JobId::as_str)
            .or(self.worker_id.as_deref())
            .or(self.pool.as_deref())
            .unwrap_or("")
    }

    /// The alert that a dispatched run has waited `waited` for a worker, and why none takes it.
    pub fn run_pending(
        job_id: JobId,
        run_id: RunId,
        waited: std::time::Duration,
        why: &str,
        at: Timestamp,
    ) -> Self {
        let message = format!(
            "run {run_id} of job {job_id} has waited {}s for a worker: {why}",
            waited.as_secs()
        );
        Alert::about_run(AlertKind::RunPending, job_id, run_id, message, at)
    }

    /// The alert that a run was abandoned.
    pub fn run_abandoned(
        job_id: JobId,
        run_id: RunId,
        attempt: u32,
        error: Option<&str>,
        at: Timestamp,
    ) -> Self {
        let message = format!(
            "run {run_id} of job {job_id} was abandoned after {attempt} attempt(s): {}",
            error.unwrap_or("no error recorded")
        );
        Alert::about_run(AlertKind::RunAbandoned, job_id, run_id, message, at)
    }

    /// The alert that a worker's policy refused a run's task, `error` saying why.
    pub fn task_refused(
        job_id: JobId,
        run_id: RunId,
        worker_id: Option<&str>,
        pool: Option<&str>,
        error: Option<&str>,
        at: Timestamp,
    ) -> Self {
        let message = format!(
            "run {run_id} of job {job_id} was refused by worker {} of pool {}, and not retried: {}",
            worker_id.unwrap_or("?"),
            pool.unwrap_or("?"),
            error.unwrap_or("no reason recorded")
        );
        Alert {
            worker_id: worker_id.map(str::to_string),
            pool: pool.map(str::to_string),
            ..Alert::about_run(AlertKind::TaskRefused, job_id, run_id, message, at)
        }
    }

    /// The alert that a job's last `failures` runs all failed, `run_id` being the latest.
    pub fn job_failing(job_id: JobId, run_id: RunId, failures: u32, at: Timestamp) -> Self {
        let message = format!("job {job_id} has failed {failures} runs in a row (latest {run_id})");
        Alert::about_run(AlertKind::JobFailing, job_id, run_id, message, at)
    }

    /// The alert that the slot of `run_id` was skipped as a misfire.
    pub fn misfire(job_id: JobId, run_id: RunId, slot: Timestamp, at: Timestamp) -> Self {
        let message = format!(
            "job {job_id} missed its slot {}; its misfire policy skipped it",
            rfc3339(slot)
        );
        Alert::about_run(AlertKind::Misfire, job_id, run_id, message, at)
    }

    /// The alert that the slot of `run_id` had no decision on the ledger by `due_by`.
    pub fn slot_missed(
        job_id: JobId,
        run_id: RunId,
        slot: Timestamp,
        due_by: Timestamp,
        at: Timestamp,
    ) -> Self {
        let message = format!(
            "job {job_id} has no decision on the ledger for its slot {} (due by {}): is its trigger partition served?",
            rfc3339(slot),
            rfc3339(due_by)
        );
        Alert::about_run(AlertKind::SlotMissed, job_id, run_id, message, at)
    }

    /// The alert that a run, `status` in its attempt `attempt`, owed its next step by `due_by`.
    /// Once per state of the run: a run stuck again later is a new alert.
    pub fn run_stuck(
        job_id: JobId,
        run_id: RunId,
        status: &str,
        attempt: u32,
        due_by: Timestamp,
        at: Timestamp,
    ) -> Self {
        let message = format!(
            "run {run_id} of job {job_id} is {status} (attempt {attempt}) and its next step was due by {}: is its dispatcher partition served?",
            rfc3339(due_by)
        );
        Alert {
            job_id: Some(job_id),
            run_id: Some(run_id),
            ..Alert::new(
                AlertKind::RunStuck,
                &format!("{run_id}/{attempt}/{status}"),
                message,
                at,
            )
        }
    }

    /// The alert that a worker went silent; `last_seen` tells this loss from a later one.
    pub fn worker_lost(worker_id: &str, pool: &str, last_seen: Timestamp, at: Timestamp) -> Self {
        let message = format!(
            "worker {worker_id} of pool {pool} has not been heard from since {}",
            rfc3339(last_seen)
        );
        let about = format!("{worker_id}/{}", last_seen.timestamp_millis());
        Alert {
            worker_id: Some(worker_id.to_string()),
            pool: Some(pool.to_string()),
            ..Alert::new(AlertKind::WorkerLost, &about, message, at)
        }
    }

    /// The alert that `pool` has no live worker, since `since`.
    pub fn pool_without_workers(pool: &str, why: &str, since: Timestamp, at: Timestamp) -> Self {
        let message = format!("pool {pool} has no live worker: {why}");
        let about = format!("{pool}/{}", since.timestamp_millis());
        Alert {
            pool: Some(pool.to_string()),
            ..Alert::new(AlertKind::PoolWithoutWorkers, &about, message, at)
        }
    }

    /// The alert that a service dead-lettered a record.
    pub fn dead_lettered(letter: &DeadLetter, job_id: Option<JobId>, at: Timestamp) -> Self {
        let message = format!(
            "{} dead-lettered {}[{}]@{}: {}",
            letter.service,
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.reason
        );
        let about = format!(
            "{}/{}/{}/{}",
            letter.service, letter.source_topic, letter.source_partition, letter.source_offset
        );
        Alert {
            job_id,
            ..Alert::new(AlertKind::DeadLettered, &about, message, at)
        }
    }
}

pub fn encode_alert(alert: &Alert) -> Result<Vec<u8>, CodecError> {
    encode(
        &CONTRACTS.alert,
        record(vec![
            ("alert_id", string(alert.alert_id.to_string())),
            (
                "kind",
                symbol(&AlertKind::ALL.map(AlertKind::as_str), alert.kind.as_str()),
            ),
            (
                "job_id",
                opt(alert.job_id.as_ref().map(JobId::as_str), string),
            ),
            ("run_id", opt(alert.run_id.map(|r| r.to_string()), string)),
            ("worker_id", opt(alert.worker_id.as_deref(), string)),
            ("pool", opt(alert.pool.as_deref(), string)),
            ("message", string(&alert.message)),
            ("at", millis(alert.at)),
        ]),
    )
}

pub fn decode_alert(bytes: &[u8]) -> Result<Alert, CodecError> {
    let value = decode(&CONTRACTS.alert, bytes)?;
    let f = Fields::of(&value, "Alert")?;
    let alert_id = f.string("alert_id")?;
    Ok(Alert {
        alert_id: uuid::Uuid::parse_str(&alert_id).map_err(|e| CodecError::Field {
            field: "alert_id",
            reason: e.to_string(),
        })?,
        kind: {
            let kind = f.string("kind")?;
            AlertKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or_else(|| CodecError::Field {
                    field: "kind",
                    reason: format!("unknown kind {kind:?}"),
                })?
        },
        job_id: f.opt_string("job_id")?.map(job_id).transpose()?,
        run_id: f.opt_string("run_id")?.map(|r| run_id(&r)).transpose()?,
        worker_id: f.opt_string("worker_id")?,
        pool: f.opt_string("pool")?,
        message: f.string("message")?,
        at: f.timestamp("at")?,
    })
}

// ---------------------------------------------------------------------------------------------
// WorkerHeartbeat.

/// A worker saying it is alive, what it serves and what it is running.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHeartbeat {
    pub worker_id: String,
    pub pool: String,
    pub capacity: u32,
    pub task_types: Vec<String>,
    pub in_flight: Vec<RunId>,
    pub interval: Duration,
    /// The last beat of a worker that shuts down.
    pub stopping: bool,
    pub at: Timestamp,
}

// ---------------------------------------------------------------------------------------------
// JobStatus.

/// A job's latest outcome and statistics, as the compacted job-status topic carries them.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub job_id: JobId,
    pub last_run_id: RunId,
    pub last_status: String,
    pub last_scheduled_for: Timestamp,
    pub last_finished_at: Option<Timestamp>,
    pub scheduled: u64,
    pub succeeded: u64,
    pub abandoned: u64,
    pub failures_in_a_row: u32,
}

pub fn encode_job_status(status: &JobStatus) -> Result<Vec<u8>, CodecError> {
    let count = |n: u64| Value::Long(i64::try_from(n).unwrap_or(i64::MAX));
    encode(
        &CONTRACTS.job_status,
        record(vec![
            ("job_id", string(status.job_id.as_str())),
            ("last_run_id", string(status.last_run_id.to_string())),
            ("last_status", string(&status.last_status)),
            ("last_scheduled_for", millis(status.last_scheduled_for)),
            ("last_finished_at", opt(status.last_finished_at, millis)),
            ("scheduled", count(status.scheduled)),
            ("succeeded", count(status.succeeded)),
            ("abandoned", count(status.abandoned)),
            ("failures_in_a_row", int(status.failures_in_a_row)),
        ]),
    )
}

pub fn decode_job_status(bytes: &[u8]) -> Result<JobStatus, CodecError> {
    let value = decode(&CONTRACTS.job_status, bytes)?;
    let f = Fields::of(&value, "JobStatus")?;
    let count = |field: &'static str| {
        let n = f.long(field)?;
        u64::try_from(n).map_err(|_| CodecError::Field {
            field,
            reason: format!("{n} is negative"),
        })
    };
    Ok(JobStatus {
        job_id: job_id(f.string("job_id")?)?,
        last_run_id: run_id(&f.string("last_run_id")?)?,
        last_status: f.string("last_status")?,
        last_scheduled_for: f.timestamp("last_scheduled_for")?,
        last_finished_at: f.opt_timestamp("last_finished_at")?,
        scheduled: count("scheduled")?,
        succeeded: count("succeeded")?,
        abandoned: count("abandoned")?,
        failures_in_a_row: f.opt_u32("failures_in_a_row")?.unwrap_or_default(),
    })
}

pub fn encode_heartbeat(beat: &WorkerHeartbeat) -> Result<Vec<u8>, CodecError> {
    encode(
        &CONTRACTS.heartbeat,
        record(vec![
            ("worker_id", string(&beat.worker_id)),
            ("pool", string(&beat.pool)),
            (
                "capacity",
                Value::Int(i32::try_from(beat.capacity).unwrap_or(i32::MAX)),
            ),
            (
                "task_types",
                Value::Array(beat.task_types.iter().map(string).collect()),
            ),
            (
                "in_flight",
                Value::Array(
                    beat.in_flight
                        .iter()
                        .map(|r| string(r.to_string()))
                        .collect(),
                ),
            ),
            ("interval_ms", duration_ms(beat.interval)),
            ("stopping", Value::Boolean(beat.stopping)),
            ("at", millis(beat.at)),
        ]),
    )
}

pub fn decode_heartbeat(bytes: &[u8]) -> Result<WorkerHeartbeat, CodecError> {
    let value = decode(&CONTRACTS.heartbeat, bytes)?;
    let f = Fields::of(&value, "WorkerHeartbeat")?;
    let in_flight = match f.get("in_flight") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Uuid(u) => run_id(&u.to_string()),
                Value::String(s) => run_id(s),
                other => Err(CodecError::Field {
                    field: "in_flight",
                    reason: format!("expected run ids, got {other:?}"),
                }),
            })
            .collect::<Result<_, _>>()?,
        _ => vec![],
    };
    let capacity = f.long("capacity")?;
    let interval = f.long("interval_ms")?;
    Ok(WorkerHeartbeat {
        worker_id: f.string("worker_id")?,
        pool: f.string("pool")?,
        capacity: u32::try_from(capacity).map_err(|_| CodecError::Field {
            field: "capacity",
            reason: format!("{capacity} is negative"),
        })?,
        task_types: f.strings("task_types")?,
        in_flight,
        interval: u64::try_from(interval)
            .map(Duration::from_millis)
            .map_err(|_| CodecError::Field {
                field: "interval_ms",
                reason: format!("{interval} is negative"),
            })?,
        stopping: matches!(f.get("stopping"), Some(Value::Boolean(true))),
        at: f.timestamp("at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::job::JobSpec;

    fn t(ms: i64) -> Timestamp {
        from_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn job(yaml_task: TaskSpec, schedule: ScheduleSpec) -> JobDefinition {
        JobSpec {
            signature: None,
            id: "report.daily".into(),
            description: Some("daily report".into()),
            schedule,
            more_schedules: vec![],
            calendars: vec![],
            task: yaml_task,
            pool: "batch".into(),
            timeout: Some(Duration::from_millis(1500)),
            misfire: MisfirePolicy::default(),
            retry: RetryPolicy {
                max_attempts: 4,
                backoff: Backoff {
                    initial: Duration::from_millis(250),
                    max: Duration::from_secs(30),
                    multiplier: 1.5,
                    jitter: 0.2,
                },
            },
            overlap: OverlapPolicy::QueueAll,
            paused: true,
            start_at: Some(t(-5000)),
            end_at: Some(t(5_000_000)),
            max_runs: Some(12),
            jitter: Some(Duration::from_millis(750)),
            priority: -3,
            shards: Some(2),
            shard_params: vec!["eu".into(), "us".into()],
        }
        .validate()
        .unwrap()
    }

    fn shell() -> TaskSpec {
        TaskSpec::Shell(ShellTask {
            env_from: BTreeMap::from([("PGPASSWORD".into(), SecretRef::named("db-password"))]),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            working_dir: Some("/tmp".into()),
        })
    }

    #[test]
    fn several_schedules_dst_policies_and_calendars_round_trip() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "id": "payroll",
            "schedule": {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin", "dst_gap": "skip"},
            "more_schedules": [{"cron": "0 0 12 ? * 6#3"}, {"every": "6h"}],
            "calendars": [{
                "name": "holidays-de",
                "timezone": "Europe/Berlin",
                "dates": ["2026-12-25", "1969-07-20"],
                "ranges": [{"from": "2026-12-27", "to": "2027-01-02"}],
                "weekdays": ["Saturday", "sun"]
            }],
            "task": {"shell": {"command": ["true"]}}
        }))
        .unwrap();
        let job = spec.validate().unwrap();
        let decoded = decode_job(&encode_job(&job).unwrap()).unwrap();
        assert_eq!(decoded, job);
        assert_eq!(decoded.calendars[0].weekdays.len(), 2);
        assert_eq!(decoded.more_schedules.len(), 2);
    }

    #[test]
    fn job_definitions_round_trip_for_every_schedule_and_task_kind() {
        let http = TaskSpec::Http(HttpTask {
            headers_from: BTreeMap::from([(
                "Authorization".into(),
                SecretRef {
                    secret: "hook-token".into(),
                    prefix: "Bearer ".into(),
                },
            )]),
            method: "POST".into(),
            url: "http://127.0.0.1:9/hook".into(),
            headers: BTreeMap::from([("X-A".into(), "b".into())]),
            body: Some("{}".into()),
            expected_status: vec![200, 202],
        });
        let schedules = [
            ScheduleSpec {
                cron: Some("0 0 3 * * *".into()),
                timezone: Some("Europe/Berlin".into()),
                ..Default::default()
            },
            ScheduleSpec {
                every: Some(Duration::from_secs(2)),
                ..Default::default()
            },
            ScheduleSpec {
                at: Some(t(0)),
                ..Default::default()
            },
        ];
        for schedule in schedules {
            for task in [shell(), http.clone()] {
                let mut def = job(task, schedule.clone());
                assert_eq!(decode_job(&encode_job(&def).unwrap()).unwrap(), def);
                def.signature = Some(Signature {
                    key_id: "0123456789abcdef".into(),
                    value: "cd".repeat(64),
                });
                let bytes = encode_job(&def).unwrap();
                assert_eq!(&bytes[..2], &MAGIC);
                assert_eq!(decode_job(&bytes).unwrap(), def);
            }
        }
    }

    #[test]
    fn misfire_policies_round_trip_and_the_default_stays_null_on_the_wire() {
        let schedule = ScheduleSpec {
            every: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let plain = job(shell(), schedule.clone());
        for policy in [
            MisfireKind::FireOnce,
            MisfireKind::Skip,
            MisfireKind::CatchUp,
        ] {
            let mut def = plain.clone();
            def.misfire = MisfirePolicy {
                policy,
                grace: Duration::from_millis(250),
                catch_up_window: Duration::from_secs(60),
            };
            assert_eq!(decode_job(&encode_job(&def).unwrap()).unwrap(), def);
        }
        let value = decode(&CONTRACTS.job, &encode_job(&plain).unwrap()).unwrap();
        let fields = Fields::of(&value, "JobDefinition").unwrap();
        assert!(
            fields.get("misfire").is_none(),
            "the default policy is written as null"
        );
    }

    #[test]
    fn every_run_event_round_trips() {
        let job_id = JobId::parse("j").unwrap();
        let run_id = RunId::derive(&job_id, t(0), TriggerKind::Schedule);
        let out = TaskOutput {
            exit_code: Some(3),
            stdout: "out".into(),
            stderr: "err".into(),
            started_at: Some(t(7)),
        };
        let kinds = vec![
            RunEventKind::RunScheduled {
                trigger: TriggerKind::Manual,
                definition_offset: 42,
            },
            RunEventKind::RunSkipped {
                reason: SkipReason::JobDeleted,
            },
            RunEventKind::RunDispatched {
                attempt: 1,
                pool: "p".into(),
            },
            RunEventKind::RunStarted {
                attempt: 1,
                worker_id: "w".into(),
            },
            RunEventKind::RunSucceeded {
                attempt: 1,
                worker_id: "w".into(),
                output: out.clone(),
            },
            RunEventKind::RunFailed {
                attempt: 2,
                worker_id: "w".into(),
                error: "boom".into(),
                output: out.clone(),
                refused: None,
            },
            RunEventKind::RunFailed {
                attempt: 2,
                worker_id: "w".into(),
                error: "refused by the worker's policy (program): /bin/rm".into(),
                output: TaskOutput::default(),
                refused: Some("program".into()),
            },
            RunEventKind::RunTimedOut {
                attempt: 2,
                worker_id: "w".into(),
                output: TaskOutput::default(),
            },
            RunEventKind::RunCancelled { attempt: 3 },
            RunEventKind::RunLost { attempt: 3 },
            RunEventKind::RunAbandoned { attempt: 3 },
            RunEventKind::RetryScheduled {
                attempt: 4,
                due_at: t(9),
            },
            RunEventKind::RunAbandoned { attempt: 4 },
        ];
        for (n, kind) in kinds.into_iter().enumerate() {
            let event = RunEvent {
                job_id: job_id.clone(),
                run_id,
                scheduled_for: t(0),
                at: t(5),
                kind,
                // Every other event about one shard of a sharded run.
                shard: (n % 2 == 1).then_some(ShardOf { index: 1, total: 4 }),
            };
            let decoded = decode_run_event(&encode_run_event(&event).unwrap()).unwrap();
            // An empty output decodes as empty strings, which is the same output.
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn tasks_trigger_state_and_dead_letters_round_trip() {
        let job_id = JobId::parse("j").unwrap();
        let task = TaskAssigned {
            signature: None,
            job_id: job_id.clone(),
            run_id: RunId::derive(&job_id, t(0), TriggerKind::Schedule),
            attempt: 2,
            scheduled_for: t(0),
            pool: "default".into(),
            task: shell(),
            timeout: None,
            definition_offset: 7,
            assigned_at: t(3),
            start_at: Some(t(4)),
            shard: None,
            concurrent_runs: true,
        };
        assert_eq!(decode_task(&encode_task(&task).unwrap()).unwrap(), task);
        let shard = TaskAssigned {
            shard: Some(ShardAssignment {
                index: 1,
                total: 3,
                param: Some("us".into()),
            }),
            task: TaskSpec::Handler(HandlerTask {
                name: "resize".into(),
                params: serde_json::json!({"width": 64}),
            }),
            ..task.clone()
        };
        assert_eq!(decode_task(&encode_task(&shard).unwrap()).unwrap(), shard);
        let state = TriggerState {
            job_id,
            last_slot: t(1),
            definition_offset: 3,
            schedule: "every 1000ms".into(),
            fired: 3,
        };
        assert_eq!(
            decode_trigger_state(&encode_trigger_state(&state).unwrap()).unwrap(),
            state
        );
        let letter = DeadLetter {
            source_topic: "kairos.jobs".into(),
            source_partition: 2,
            source_offset: 9,
            service: "trigger".into(),
            reason: "garbage".into(),
            payload: Some(vec![0, 1, 2]),
            at: t(4),
        };
        assert_eq!(
            decode_dead_letter(&encode_dead_letter(&letter).unwrap()).unwrap(),
            letter
        );
    }

    #[test]
    fn alerts_round_trip_and_repeat_with_the_same_id() {
        let job_id = JobId::parse("j").unwrap();
        let run = RunId::derive(&job_id, t(0), TriggerKind::Schedule);
        let alert = Alert::run_abandoned(job_id.clone(), run, 3, Some("exit 1"), t(9));
        assert_eq!(decode_alert(&encode_alert(&alert).unwrap()).unwrap(), alert);
        assert_eq!(
            Alert::run_abandoned(job_id.clone(), run, 3, None, t(10)).alert_id,
            alert.alert_id
        );
        let lost = Alert::worker_lost("host-1", "batch", t(5), t(9));
        assert_eq!(decode_alert(&encode_alert(&lost).unwrap()).unwrap(), lost);
        assert_eq!(lost.key(), "host-1");
        assert_ne!(
            Alert::worker_lost("host-1", "batch", t(7), t(9)).alert_id,
            lost.alert_id,
            "a later loss of the same worker is a new alert"
        );
        let unserved = Alert::pool_without_workers("batch", "its last worker stopped", t(5), t(9));
        assert_eq!(
            decode_alert(&encode_alert(&unserved).unwrap()).unwrap(),
            unserved
        );
        assert_eq!(unserved.key(), "batch");
        let failing = Alert::job_failing(job_id, run, 3, t(9));
        assert_eq!(
            decode_alert(&encode_alert(&failing).unwrap()).unwrap(),
            failing
        );
        assert_ne!(failing.alert_id, alert.alert_id);
    }

    #[test]
    fn job_statuses_round_trip() {
        let job_id = JobId::parse("report.daily").unwrap();
        let status = JobStatus {
            last_run_id: RunId::derive(&job_id, t(0), TriggerKind::Schedule),
            job_id,
            last_status: "abandoned".into(),
            last_scheduled_for: t(0),
            last_finished_at: Some(t(900)),
            scheduled: 12,
            succeeded: 9,
            abandoned: 3,
            failures_in_a_row: 2,
        };
        assert_eq!(
            decode_job_status(&encode_job_status(&status).unwrap()).unwrap(),
            status
        );
    }

    #[test]
    fn heartbeats_round_trip() {
        let job_id = JobId::parse("j").unwrap();
        let beat = WorkerHeartbeat {
            worker_id: "host-1".into(),
            pool: "batch".into(),
            capacity: 4,
            task_types: vec!["shell".into(), "http".into()],
            in_flight: vec![RunId::derive(&job_id, t(0), TriggerKind::Schedule)],
            interval: Duration::from_secs(2),
            stopping: false,
            at: t(1),
        };
        assert_eq!(
            decode_heartbeat(&encode_heartbeat(&beat).unwrap()).unwrap(),
            beat
        );
    }

    #[test]
    fn cancel_requests_round_trip() {
        let job_id = JobId::parse("j").unwrap();
        let request = CancelRequest {
            run_id: RunId::derive(&job_id, t(0), TriggerKind::Schedule),
            job_id,
            reason: Some("operator".into()),
            attempt: None,
            at: t(1),
        };
        assert_eq!(
            decode_cancel(&encode_cancel(&request).unwrap()).unwrap(),
            request
        );
        let fence = CancelRequest {
            attempt: Some(2),
            ..request
        };
        assert_eq!(
            decode_cancel(&encode_cancel(&fence).unwrap()).unwrap(),
            fence
        );
    }

    /// Re-encodes a current record with an earlier version of its schema, as a producer of that
    /// release wrote it: the fields both versions have, under the earlier fingerprint.
    fn written_with_earlier(contract: &Contract, version: usize, bytes: &[u8]) -> Vec<u8> {
        let current = decode(contract, bytes).unwrap();
        let (fingerprint, schema) = &contract.earlier[version];
        let Value::Record(fields) = current else {
            panic!("a record")
        };
        let known = |name: &str| schema_fields(schema).contains(&name.to_string());
        let earlier = Value::Record(fields.into_iter().filter(|(n, _)| known(n)).collect());
        let datum = apache_avro::to_avro_datum(schema, earlier.resolve(schema).unwrap()).unwrap();
        [&MAGIC[..], fingerprint, &datum].concat()
    }

    fn schema_fields(schema: &Schema) -> Vec<String> {
        match schema {
            Schema::Record(record) => record.fields.iter().map(|f| f.name.clone()).collect(),
            _ => vec![],
        }
    }

    /// Every earlier writer a reader accepts: the released v1 schemas, and each version under the
    /// fingerprint Kairos wrote before it followed the specification.
    #[test]
    fn records_written_with_earlier_versions_and_fingerprints_still_decode() {
        // Secret references came with the current version; earlier writers could not write them.
        let TaskSpec::Shell(shell) = shell() else {
            unreachable!()
        };
        let shell = TaskSpec::Shell(ShellTask {
            env_from: BTreeMap::new(),
            ..shell
        });
        let job = job(
            shell.clone(),
            ScheduleSpec {
                cron: Some("0 0 3 * * *".into()),
                timezone: Some("Europe/Berlin".into()),
                ..ScheduleSpec::default()
            },
        );
        let job_id = JobId::parse("report.daily").unwrap();
        let skipped = RunEvent {
            job_id: job_id.clone(),
            run_id: RunId::derive(&job_id, t(0), TriggerKind::Schedule),
            scheduled_for: t(0),
            at: t(5),
            kind: RunEventKind::RunSkipped {
                reason: SkipReason::Overlap,
            },
            shard: None,
        };
        // The current version under its old fingerprint, each earlier one under both of its own.
        assert_eq!(CONTRACTS.job.earlier.len(), 5);
        assert_eq!(CONTRACTS.run_event.earlier.len(), 7);
        for version in 0..7 {
            let bytes = written_with_earlier(
                &CONTRACTS.run_event,
                version,
                &encode_run_event(&skipped).unwrap(),
            );
            assert_eq!(
                decode_run_event(&bytes).unwrap(),
                skipped,
                "event, earlier writer {version}"
            );
        }
        for version in 0..5 {
            let bytes = written_with_earlier(&CONTRACTS.job, version, &encode_job(&job).unwrap());
            assert_ne!(bytes[2..10], CONTRACTS.job.fingerprint[..]);
            assert_eq!(
                decode_job(&bytes).unwrap(),
                job,
                "job, earlier writer {version}"
            );
        }
        // A v3 task is unsigned; a v2 task runs after the job's earlier runs; a v1 task (no
        // start time) also starts at once.
        let task = TaskAssigned {
            signature: Some(Signature {
                key_id: "0123456789abcdef".into(),
                value: "ab".repeat(64),
            }),
            job_id: job_id.clone(),
            run_id: skipped.run_id,
            attempt: 1,
            scheduled_for: t(0),
            pool: "default".into(),
            task: shell,
            timeout: None,
            definition_offset: 7,
            assigned_at: t(1),
            start_at: Some(t(2)),
            shard: None,
            concurrent_runs: true,
        };
        assert_eq!(CONTRACTS.task_assigned.earlier.len(), 7);
        assert_eq!(decode_task(&encode_task(&task).unwrap()).unwrap(), task);
        let v3 = written_with_earlier(&CONTRACTS.task_assigned, 2, &encode_task(&task).unwrap());
        assert_eq!(
            decode_task(&v3).unwrap(),
            TaskAssigned {
                signature: None,
                ..task.clone()
            }
        );
        let v2 = written_with_earlier(&CONTRACTS.task_assigned, 4, &encode_task(&task).unwrap());
        assert_eq!(
            decode_task(&v2).unwrap(),
            TaskAssigned {
                concurrent_runs: false,
                signature: None,
                ..task.clone()
            }
        );
        let v1 = written_with_earlier(&CONTRACTS.task_assigned, 6, &encode_task(&task).unwrap());
        assert_eq!(
            decode_task(&v1).unwrap(),
            TaskAssigned {
                start_at: None,
                concurrent_runs: false,
                signature: None,
                ..task
            }
        );
    }

    /// Every released version is one the current reader can read, by apache-avro's full
    /// compatibility check (not a comparison of the files). The reverse does not hold for
    /// RunEvent: a v1 reader does not know the `calendar` and `dst_gap` skip reasons.
    #[test]
    fn the_current_schemas_read_every_released_version() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        for contract in [
            &CONTRACTS.job,
            &CONTRACTS.run_event,
            &CONTRACTS.task_assigned,
            &CONTRACTS.alert,
        ] {
            for (_, earlier) in &contract.earlier {
                SchemaCompatibility::can_read(earlier, &contract.schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", contract.name));
            }
        }
        let (_, run_event_v1) = CONTRACTS.run_event.earlier.last().unwrap();
        assert!(SchemaCompatibility::can_read(&CONTRACTS.run_event.schema, run_event_v1).is_err());
        let (_, job_v1) = CONTRACTS.job.earlier.last().unwrap();
        SchemaCompatibility::can_read(&CONTRACTS.job.schema, job_v1)
            .expect("a v1 reader reads a current job, without the new fields");
    }

    /// The fingerprint Kairos writes is taken of the Parsing Canonical Form with `logicalType`
    /// stripped, so a `{"type": "long", "logicalType": ...}` is plain `"long"` in it.
    #[test]
    fn the_canonical_form_reduces_logical_types_to_their_primitive() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "T", "namespace": "io.kairos", "doc": "d", "fields": [
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0},
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"io.kairos.T","type":"record","fields":[{"name":"at","type":"long"},{"name":"id","type":"string"}]}"#
        );
    }

    /// Zig-zag varint, as Avro writes `long`s (lengths and counts).
    fn varint(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = vec![];
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    /// A crafted length or count is refused before anything that size is allocated, and a
    /// truncated datum is an error: bad bytes are dead-lettered, never a crash or a stall.
    #[test]
    fn huge_lengths_and_truncated_data_are_errors_not_allocations() {
        let header = [&MAGIC[..], &CONTRACTS.job.fingerprint].concat();
        // JobDefinition starts with the id, a string: claim 1 TiB of it, then 400 MiB (less
        // than the crate's own 512 MiB limit, more than any record may be).
        let started = std::time::Instant::now();
        for claim in [1 << 40, 400 << 20] {
            let huge_string = [&header[..], &varint(claim), b"x"].concat();
            let error = decode_job(&huge_string).unwrap_err().to_string();
            assert!(error.contains("allocat"), "{error}");
        }
        // RunEvent starts with an enum; the job id string follows: claim 2^62 bytes.
        let event_header = [&MAGIC[..], &CONTRACTS.run_event.fingerprint].concat();
        let huge = [&event_header[..], &varint(0), &varint(1 << 62)].concat();
        assert!(decode_run_event(&huge).is_err());
        let valid = encode_job(&job(
            shell(),
            ScheduleSpec {
                every: Some(Duration::from_secs(1)),
                ..ScheduleSpec::default()
            },
        ))
        .unwrap();
        // (Not the last byte: apache-avro reads a union cut off at its end as null, which is
        // what the last field, an absent signature, is.)
        for cut in [11, valid.len() / 2, valid.len() - 2] {
            assert!(decode_job(&valid[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn garbage_and_other_schemas_are_errors_not_panics() {
        assert!(matches!(
            decode_job(b"hello"),
            Err(CodecError::NotSingleObject)
        ));
        assert!(matches!(decode_job(&[]), Err(CodecError::NotSingleObject)));
        let task_bytes = encode_trigger_state(&TriggerState {
            job_id: JobId::parse("j").unwrap(),
            last_slot: t(0),
            definition_offset: 0,
            schedule: "every 1000ms".into(),
            fired: 3,
        })
        .unwrap();
        let err = decode_job(&task_bytes).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownSchema(_, "JobDefinition")),
            "{err}"
        );
        let mut truncated = encode_job(&job(
            shell(),
            ScheduleSpec {
                every: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        ))
        .unwrap();
        truncated.truncate(truncated.len() / 2);
        assert!(decode_job(&truncated).is_err());
        let mut padded = encode_job(&job(
            shell(),
            ScheduleSpec {
                every: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        ))
        .unwrap();
        padded.extend_from_slice(b"junk");
        assert!(
            matches!(decode_job(&padded), Err(CodecError::Avro(reason)) if reason.contains("trailing"))
        );
    }

    #[test]
    fn a_decodable_but_invalid_job_is_rejected_with_the_validation_reason() {
        let mut def = job(
            shell(),
            ScheduleSpec {
                every: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        );
        def.schedule = kairos_core::Schedule::Every {
            interval: Duration::from_secs(1),
        };
        let mut bytes = encode_job(&def).unwrap();
        // Flip the id to one with a space: still valid Avro, no longer a valid job.
        let pos = bytes
            .windows(12)
            .position(|w| w == b"report.daily")
            .unwrap();
        bytes[pos + 6] = b' ';
        let err = decode_job(&bytes).unwrap_err();
        assert!(
            matches!(err, CodecError::Invalid(ValidationError::InvalidId(_))),
            "{err}"
        );
    }
}
