//! What a job is: the user-facing job file format and the validated [`JobDefinition`].
//!
//! A job file (YAML or JSON) deserialises into [`JobSpec`]; [`JobSpec::validate`] turns it into a
//! [`JobDefinition`] or a [`ValidationError`] that says exactly what is wrong. Nothing reaches
//! Kafka without passing through here, and every service validates what it consumes, because any
//! Kafka producer can write to the jobs topic. A service validates a definition once, where it
//! enters, and keeps it validated in its store ([`stored`]): reading it back checks nothing again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::calendar::{Calendar, CalendarError, CalendarSpec};
use crate::schedule::{DstGap, Schedule, ScheduleError, Slot};
use crate::secrets::{valid_secret_name, SecretRef};
use crate::signing::Signature;
use crate::Timestamp;

/// The largest HTTP body or environment a job may carry; larger payloads belong in storage the
/// task fetches, not in the definition that every run copies.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Job ids become Kafka keys, metric-free log fields and URL path segments.
pub const MAX_ID_LEN: usize = 200;
/// Most schedules (`schedule` and `more_schedules` together) one job may have.
pub const MAX_SCHEDULES: usize = 16;
/// How many slots [`JobDefinition::upcoming`] looks through for ones that run.
const MAX_SLOTS_SEARCHED: usize = 10_000;
/// The pool a job runs in when it names none.
pub const DEFAULT_POOL: &str = "default";

/// A job's identity: the Kafka key of every record about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Checks the characters and length of a job id.
    pub fn parse(id: &str) -> Result<Self, ValidationError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok_char) {
            return Err(ValidationError::InvalidId(id.to_string()));
        }
        Ok(JobId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job file as written by a user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub schedule: ScheduleSpec,
    /// Further schedules: the job fires at every slot of any of them (a slot two schedules share
    /// is one run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_schedules: Vec<ScheduleSpec>,
    /// Days on which no slot runs; such a slot is recorded as skipped (`calendar`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calendars: Vec<CalendarSpec>,
    pub task: TaskSpec,
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The worker kills the task when it runs longer than this.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// What to do with slots that were missed (nobody owned the job when they came due).
    #[serde(default, skip_serializing_if = "MisfirePolicy::is_default")]
    pub misfire: MisfirePolicy,
    /// How often and how soon a failed, timed-out or lost attempt is tried again.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// What to do when a run comes due while another run of the job is still active.
    #[serde(default, skip_serializing_if = "OverlapPolicy::is_default")]
    pub overlap: OverlapPolicy,
    /// A paused job fires nothing; on resume its missed slots follow the misfire policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// No slot before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Timestamp>,
    /// No slot after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<Timestamp>,
    /// The job fires no more once this many slots have run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// Each slot fires up to this much later than scheduled, by an amount fixed per run, so that
    /// many jobs on the same schedule do not all start at once.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// When the job's pool is saturated (its `max_in_flight` reached), higher-priority runs are
    /// dispatched first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Each fire runs this many tasks, one per shard, in parallel; the run succeeds when every
    /// shard has. Absent or 1: not sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// The parameter each shard receives, by index (`KAIROS_SHARD_PARAM`); empty or one per shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_params: Vec<String>,
    /// The writer's signature of the job's task (see [`crate::signing`]); kairosctl and the API
    /// add it, a job file need not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Most shards a job may have.
pub const MAX_SHARDS: u32 = 1000;

/// What happens to a run that comes due while an earlier run of the same job is still active
/// (dispatched, running, or waiting for a retry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Run it anyway, concurrently.
    #[default]
    Allow,
    /// Do not run it; record it as skipped (Kubernetes `Forbid`, Temporal `Skip`).
    Forbid,
    /// Let it wait until the active run is over; at most one waits, later ones are skipped
    /// (Temporal `BufferOne`).
    Queue,
    /// Let every run wait its turn, oldest first, up to [`MAX_QUEUED`] waiting (Temporal
    /// `BufferAll`); beyond that they are skipped.
    QueueAll,
    /// Cancel the active run (its running attempt is stopped), then start the new one (Kubernetes
    /// `Replace`, Temporal `CancelOther`).
    Replace,
}

/// Most runs of one job that `queue_all` lets wait.
pub const MAX_QUEUED: usize = 100;

impl OverlapPolicy {
    fn is_default(&self) -> bool {
        *self == OverlapPolicy::Allow
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Allow => "allow",
            OverlapPolicy::Forbid => "forbid",
            OverlapPolicy::Queue => "queue",
            OverlapPolicy::QueueAll => "queue_all",
            OverlapPolicy::Replace => "replace",
        }
    }
}

/// Retries of a run whose attempt failed, timed out or lost its worker.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; 1 means no retry.
    #[serde(default = "one")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
}

/// The delay before attempt n+1: `initial * multiplier^(n-1)`, at most `max`, then spread by
/// up to `jitter` (a fraction) either way so that retries of many runs do not arrive together.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max: Duration,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    #[serde(default)]
    pub jitter: f64,
}

/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

fn one() -> u32 {
    1
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_multiplier() -> f64 {
    2.0
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_initial_backoff(),
            max: default_max_backoff(),
            multiplier: default_multiplier(),
            jitter: 0.0,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let b = &self.backoff;
        let invalid = |reason: String| Err(ValidationError::InvalidRetry(reason));
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return invalid(format!(
                "max_attempts must be 1-{MAX_ATTEMPTS}, got {}",
                self.max_attempts
            ));
        }
        if b.initial.is_zero() || b.max < b.initial {
            return invalid(format!(
                "backoff needs 0 < initial <= max, got initial {:?}, max {:?}",
                b.initial, b.max
            ));
        }
        if !(1.0..=100.0).contains(&b.multiplier) {
            return invalid(format!(
                "backoff.multiplier must be 1-100, got {}",
                b.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return invalid(format!("backoff.jitter must be 0-1, got {}", b.jitter));
        }
        Ok(())
    }
}

/// What happens to slots that were missed: all triggers down, a partition unowned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MisfirePolicy {
    #[serde(default)]
    pub policy: MisfireKind,
    /// A slot late by no more than this still counts as on time and runs, whatever the policy.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// `catch_up` only: missed slots older than this are recorded as misfired, not run.
    #[serde(default = "default_catch_up_window", with = "humantime_serde")]
    pub catch_up_window: Duration,
}

/// How missed slots are handled; each missed slot is either run or recorded as misfired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfireKind {
    /// Run the latest missed slot once; record the older ones as misfired (Quartz's "fire now").
    #[default]
    FireOnce,
    /// Run none of the missed slots; record them all as misfired.
    Skip,
    /// Run every missed slot within `catch_up_window`, oldest first.
    CatchUp,
}

impl MisfireKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MisfireKind::FireOnce => "fire_once",
            MisfireKind::Skip => "skip",
            MisfireKind::CatchUp => "catch_up",
        }
    }
}

/// How late a slot may fire and still count as on time, unless the job says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How far back `catch_up` reaches, unless the job says otherwise.
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(3600);

fn default_grace() -> Duration {
    DEFAULT_GRACE
}

fn default_catch_up_window() -> Duration {
    DEFAULT_CATCH_UP_WINDOW
}

impl Default for MisfirePolicy {
    fn default() -> Self {
        MisfirePolicy {
            policy: MisfireKind::FireOnce,
            grace: DEFAULT_GRACE,
            catch_up_window: DEFAULT_CATCH_UP_WINDOW,
        }
    }
}

impl MisfirePolicy {
    fn is_default(&self) -> bool {
        *self == MisfirePolicy::default()
    }
}

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

/// Exactly one of `cron`, `every` or `at`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 5 fields (crontab) or 6-7 fields (Quartz, seconds first); see [`crate::schedule::Dialect`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA zone for `cron`; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `cron` only: what a slot whose local time does not exist (DST gap) does.
    #[serde(default, skip_serializing_if = "DstGap::is_default")]
    pub dst_gap: DstGap,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

impl std::fmt::Display for ScheduleSpec {
    /// The schedule in a few words, as the CLI and the status page show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.cron, self.every, self.at) {
            (Some(cron), _, _) => {
                write!(
                    f,
                    "cron {cron} {}",
                    self.timezone.as_deref().unwrap_or("UTC")
                )?;
                if !self.dst_gap.is_default() {
                    write!(f, " (DST gap: {})", self.dst_gap.as_str())?;
                }
                Ok(())
            }
            (None, Some(every), _) => write!(
                f,
                "every {}",
                humantime_serde::re::humantime::format_duration(every)
            ),
            (None, None, Some(at)) => write!(
                f,
                "at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            (None, None, None) => f.write_str("no schedule"),
        }
    }
}

/// What a run executes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    Shell(ShellTask),
    Http(HttpTask),
    Handler(HandlerTask),
}

impl TaskSpec {
    /// The task type name that workers advertise and metrics label by: `shell`, `http`, or the
    /// name of a handler.
    pub fn kind(&self) -> &str {
        match self {
            TaskSpec::Shell(_) => "shell",
            TaskSpec::Http(_) => "http",
            TaskSpec::Handler(handler) => &handler.name,
        }
    }
}

/// Code registered under `name` in the workers of the job's pool (a worker built from the
/// `kairos-worker` crate with its own handlers), called with `params`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerTask {
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
}

impl HandlerTask {
    /// Whether `name` can name a handler: 1-64 of a-z 0-9 . _ - , and not a built-in task type.
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && !matches!(name, "shell" | "http")
    }
}

/// A process: `command[0]` is the program, the rest its arguments (no shell unless you ask for one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellTask {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secrets the worker looks up as the task starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_from: BTreeMap<String, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// An HTTP request whose response status decides success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTask {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are secrets the worker looks up as the request is made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from: BTreeMap<String, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Statuses that count as success; any 2xx when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_status: Vec<u16>,
}

fn default_method() -> String {
    "GET".to_string()
}

/// A job that passed validation: its schedule is parsed and its task is runnable.
#[derive(Clone, Debug, PartialEq)]
pub struct JobDefinition {
    pub id: JobId,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub more_schedules: Vec<Schedule>,
    pub calendars: Vec<Calendar>,
    pub task: TaskSpec,
    pub pool: String,
    pub timeout: Option<Duration>,
    pub misfire: MisfirePolicy,
    pub retry: RetryPolicy,
    pub overlap: OverlapPolicy,
    pub paused: bool,
    pub start_at: Option<Timestamp>,
    pub end_at: Option<Timestamp>,
    pub max_runs: Option<u32>,
    pub jitter: Option<Duration>,
    pub priority: i32,
    /// 1 for a job that is not sharded.
    pub shards: u32,
    pub shard_params: Vec<String>,
    pub signature: Option<Signature>,
}

/// Why a job was rejected. Each message names the field and the offending value.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ValidationError {
    #[error("invalid job id {0:?}: use 1-200 characters from A-Z a-z 0-9 . _ -")]
    InvalidId(String),
    #[error("schedule: give exactly one of `cron`, `every` or `at`")]
    ScheduleKind,
    #[error("schedule: `timezone` only applies to `cron`")]
    TimezoneWithoutCron,
    #[error("schedule: `dst_gap` only applies to `cron`")]
    DstGapWithoutCron,
    #[error("more_schedules has {0} entries; the limit is {MAX_SCHEDULES} schedules in all")]
    TooManySchedules(usize),
    #[error("more_schedules[{index}]: {error}")]
    MoreSchedules {
        index: usize,
        error: Box<ValidationError>,
    },
    #[error("{0}")]
    Calendar(#[from] CalendarError),
    #[error("schedule: {0}")]
    Schedule(#[from] ScheduleError),
    #[error("task.shell.command must name a program")]
    EmptyCommand,
    #[error("shards is {0}; give 1-{MAX_SHARDS}")]
    InvalidShards(u32),
    #[error("shard_params has {params} entries for {shards} shards; give one per shard or none")]
    ShardParams { shards: u32, params: usize },
    #[error("task.handler.name {0:?} is not a handler name: use 1-64 characters from a-z 0-9 . _ - (not shell or http)")]
    InvalidHandler(String),
    #[error("task.http.url {url:?} is not an http(s) URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("task.http.method {0:?} is not an HTTP method")]
    InvalidMethod(String),
    #[error("task.http.expected_status {0} is not an HTTP status (100-599)")]
    InvalidStatus(u16),
    #[error("{field} is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("invalid pool {0:?}: use 1-100 characters from A-Z a-z 0-9 . _ -")]
    InvalidPool(String),
    #[error("timeout must be longer than zero")]
    ZeroTimeout,
    #[error("misfire.catch_up_window must be longer than zero")]
    ZeroCatchUpWindow,
    #[error("retry: {0}")]
    InvalidRetry(String),
    #[error("end_at must be after start_at")]
    EmptyWindow,
    #[error("max_runs must be at least 1")]
    ZeroMaxRuns,
    #[error("jitter must be shorter than a day, got {0:?}")]
    InvalidJitter(Duration),
    #[error("{field}: {name:?} is not a secret name: use 1-100 characters from A-Z a-z 0-9 . _ - (not starting with .)")]
    InvalidSecretName { field: String, name: String },
    #[error("task.shell: {0:?} is not an environment variable name (empty, or with = or NUL)")]
    InvalidVariable(String),
    #[error("{field}: {name:?} is given both a value and a secret")]
    ValueAndSecret { field: &'static str, name: String },
}

impl JobSpec {
    /// Validates the spec and parses its schedule.
    pub fn validate(&self) -> Result<JobDefinition, ValidationError> {
        let id = JobId::parse(&self.id)?;
        let schedule = self.schedule.validate()?;
        if self.more_schedules.len() + 1 > MAX_SCHEDULES {
            return Err(ValidationError::TooManySchedules(self.more_schedules.len()));
        }
        let more_schedules = self
            .more_schedules
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                spec.validate()
                    .map_err(|error| ValidationError::MoreSchedules {
                        index,
                        error: Box::new(error),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let calendars = self
            .calendars
            .iter()
            .map(CalendarSpec::validate)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(twice) = calendars
            .iter()
            .enumerate()
            .find(|(i, c)| calendars[..*i].iter().any(|d| d.name == c.name))
        {
            return Err(CalendarError::Duplicate(twice.1.name.clone()).into());
        }
        validate_task(&self.task)?;
        let pool_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.pool.is_empty() || self.pool.len() > 100 || !self.pool.chars().all(pool_ok) {
            return Err(ValidationError::InvalidPool(self.pool.clone()));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(ValidationError::ZeroTimeout);
        }
        if self.misfire.catch_up_window.is_zero() {
            return Err(ValidationError::ZeroCatchUpWindow);
        }
        self.retry.validate()?;
        if let (Some(start), Some(end)) = (self.start_at, self.end_at) {
            if end <= start {
                return Err(ValidationError::EmptyWindow);
            }
        }
        if self.max_runs == Some(0) {
            return Err(ValidationError::ZeroMaxRuns);
        }
        if let Some(jitter) = self.jitter.filter(|j| *j >= Duration::from_secs(86_400)) {
            return Err(ValidationError::InvalidJitter(jitter));
        }
        let shards = self.shards.unwrap_or(1);
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(ValidationError::InvalidShards(shards));
        }
        if !self.shard_params.is_empty() && self.shard_params.len() != shards as usize {
            return Err(ValidationError::ShardParams {
                shards,
                params: self.shard_params.len(),
            });
        }
        check_size(
            "shard_params",
            self.shard_params.iter().map(String::len).sum(),
        )?;
        Ok(self
            .clone()
            .into_definition(id, schedule, more_schedules, calendars))
    }

    /// The definition this spec writes down, read back from a service's own store: see [`stored`].
    fn read_stored(self) -> Result<JobDefinition, ValidationError> {
        let schedule = self.schedule.read_stored()?;
        let more_schedules = self
            .more_schedules
            .iter()
            .map(ScheduleSpec::read_stored)
            .collect::<Result<Vec<_>, _>>()?;
        let calendars = self
            .calendars
            .iter()
            .map(CalendarSpec::read)
            .collect::<Result<Vec<_>, _>>()?;
        let id = JobId(self.id.clone());
        Ok(self.into_definition(id, schedule, more_schedules, calendars))
    }

    fn into_definition(
        self,
        id: JobId,
        schedule: Schedule,
        more_schedules: Vec<Schedule>,
        calendars: Vec<Calendar>,
    ) -> JobDefinition {
        JobDefinition {
            id,
            description: self.description,
            schedule,
            more_schedules,
            calendars,
            task: self.task,
            pool: self.pool,
            timeout: self.timeout,
            misfire: self.misfire,
            retry: self.retry,
            overlap: self.overlap,
            paused: self.paused,
            start_at: self.start_at.map(to_the_millisecond),
            end_at: self.end_at.map(to_the_millisecond),
            max_runs: self.max_runs,
            jitter: self.jitter,
            priority: self.priority,
            shards: self.shards.unwrap_or(1),
            shard_params: self.shard_params,
            signature: self.signature,
        }
    }
}

impl ScheduleSpec {
    fn validate(&self) -> Result<Schedule, ValidationError> {
        if self.cron.is_none() && !self.dst_gap.is_default() {
            return Err(ValidationError::DstGapWithoutCron);
        }
        match (&self.cron, self.every, self.at) {
            (Some(expr), None, None) => Ok(Schedule::cron_with(
                expr,
                self.timezone.as_deref().unwrap_or("UTC"),
                self.dst_gap,
            )?),
            (None, Some(interval), None) if self.timezone.is_none() => {
                Ok(Schedule::every(interval)?)
            }
            (None, None, Some(at)) if self.timezone.is_none() => Ok(Schedule::at(at)),
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err(ValidationError::TimezoneWithoutCron)
            }
            _ => Err(ValidationError::ScheduleKind),
        }
    }

    /// The schedule this spec writes down, read back from a store: see [`stored`].
    fn read_stored(&self) -> Result<Schedule, ValidationError> {
        match (&self.cron, self.every, self.at) {
            (Some(expr), _, _) => Ok(Schedule::cron_stored(
                expr,
                self.timezone.as_deref().unwrap_or("UTC"),
                self.dst_gap,
            )?),
            (None, Some(interval), _) => Ok(Schedule::Every { interval }),
            (None, None, Some(at)) => Ok(Schedule::at(at)),
            (None, None, None) => Err(ValidationError::ScheduleKind),
        }
    }

    /// The job file form that validates back to `schedule`.
    pub fn of(schedule: &Schedule) -> Self {
        match schedule {
            Schedule::Cron(cron) => ScheduleSpec {
                cron: Some(cron.expr().to_string()),
                timezone: Some(cron.timezone().name().to_string()),
                dst_gap: cron.dst_gap(),
                ..ScheduleSpec::default()
            },
            Schedule::Every { interval } => ScheduleSpec {
                every: Some(*interval),
                ..ScheduleSpec::default()
            },
            Schedule::At { at } => ScheduleSpec {
                at: Some(*at),
                ..ScheduleSpec::default()
            },
        }
    }
}

fn validate_task(task: &TaskSpec) -> Result<(), ValidationError> {
    match task {
        TaskSpec::Shell(shell) => {
            if shell.command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(ValidationError::EmptyCommand);
            }
            let variables = shell.env.keys().chain(shell.env_from.keys());
            if let Some(bad) = variables
                .into_iter()
                .find(|name| name.is_empty() || name.contains(['=', '\0']))
            {
                return Err(ValidationError::InvalidVariable(bad.clone()));
            }
            let env_size: usize = shell.env.iter().map(|(k, v)| k.len() + v.len()).sum();
            check_size("task.shell.env", env_size)?;
            check_secrets("task.shell", "env", &shell.env, &shell.env_from, false)
        }
        TaskSpec::Http(http) => {
            let invalid = |reason: &str| ValidationError::InvalidUrl {
                url: http.url.clone(),
                reason: reason.to_string(),
            };
            let url = url::Url::parse(&http.url).map_err(|e| invalid(&e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid("the scheme must be http or https"));
            }
            let method_ok =
                !http.method.is_empty() && http.method.chars().all(|c| c.is_ascii_uppercase());
            if !method_ok {
                return Err(ValidationError::InvalidMethod(http.method.clone()));
            }
            if let Some(bad) = http
                .expected_status
                .iter()
                .find(|s| !(100..=599).contains(*s))
            {
                return Err(ValidationError::InvalidStatus(*bad));
            }
            let headers: usize = http.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            check_size("task.http.headers", headers)?;
            check_secrets(
                "task.http",
                "headers",
                &http.headers,
                &http.headers_from,
                true,
            )?;
            check_size("task.http.body", http.body.as_ref().map_or(0, String::len))
        }
        TaskSpec::Handler(handler) => {
            if !HandlerTask::valid_name(&handler.name) {
                return Err(ValidationError::InvalidHandler(handler.name.clone()));
            }
            check_size("task.handler.params", handler.params.to_string().len())
        }
    }
}

/// Slots and the wire formats are millisecond times; a bound finer than that (`Utc::now()` has
/// nanoseconds) would put a slot between the bound and the millisecond before it.
fn to_the_millisecond(t: Timestamp) -> Timestamp {
    use chrono::DurationRound;
    t.duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap_or(t)
}

/// Secret references name secrets, and a variable or header is given a value or a secret, not
/// both (header names compare without case, as HTTP does).
fn check_secrets(
    task: &str,
    values_field: &'static str,
    values: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, SecretRef>,
    ignore_case: bool,
) -> Result<(), ValidationError> {
    for (name, reference) in secrets {
        if !valid_secret_name(&reference.secret) {
            return Err(ValidationError::InvalidSecretName {
                field: format!("{task}.{values_field}_from.{name}"),
                name: reference.secret.clone(),
            });
        }
        let same = |other: &String| match ignore_case {
            true => other.eq_ignore_ascii_case(name),
            false => other == name,
        };
        if values.keys().any(same) {
            return Err(ValidationError::ValueAndSecret {
                field: values_field,
                name: name.clone(),
            });
        }
    }
    check_size(
        "secret references",
        secrets
            .iter()
            .map(|(k, r)| k.len() + r.secret.len() + r.prefix.len())
            .sum(),
    )
}

fn check_size(field: &'static str, size: usize) -> Result<(), ValidationError> {
    if size > MAX_PAYLOAD_BYTES {
        return Err(ValidationError::PayloadTooLarge {
            field,
            size,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

impl JobDefinition {
    /// All the job's schedules: `schedule`, then `more_schedules`.
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        std::iter::once(&self.schedule).chain(&self.more_schedules)
    }

    /// The first slot of the job strictly after `after`, within its `start_at`/`end_at` bounds:
    /// the earliest of its schedules' next slots. Where two schedules share an instant, one that
    /// no DST rule changed wins, so a slot is run rather than dropped.
    pub fn next_slot(&self, after: Timestamp) -> Option<Slot> {
        let from = match self.start_at {
            Some(start) if after < start => start - chrono::Duration::nanoseconds(1),
            _ => after,
        };
        let slot = self
            .schedules()
            .filter_map(|s| s.next_slot_after(from))
            .min_by_key(|slot| (slot.at, slot.dst.is_some()))?;
        self.end_at.is_none_or(|end| slot.at <= end).then_some(slot)
    }

    /// Every slot of the job after `after`, in order, run or not.
    pub fn slots_after(&self, after: Timestamp) -> impl Iterator<Item = Slot> + '_ {
        std::iter::successors(self.next_slot(after), |s| self.next_slot(s.at))
    }

    /// The calendar that excludes `slot`, if any.
    pub fn excluded_by(&self, slot: Timestamp) -> Option<&Calendar> {
        self.calendars.iter().find(|c| c.excludes(slot))
    }

    /// Whether the slot runs: no DST rule drops it and no calendar excludes it.
    pub fn runs_at(&self, slot: &Slot) -> bool {
        !slot.is_dropped() && self.excluded_by(slot.at).is_none()
    }

    /// The next `count` times the job runs after `after`, having run `fired` slots so far: slots
    /// that a DST rule drops or a calendar excludes are left out, and none are left once
    /// `max_runs` is reached.
    pub fn upcoming(&self, after: Timestamp, count: usize, fired: u32) -> Vec<Timestamp> {
        let left = self
            .max_runs
            .map_or(count, |max| count.min(max.saturating_sub(fired) as usize));
        let mut times = Vec::with_capacity(left);
        let mut cursor = after;
        // Bounded, for a calendar that excludes every day of a schedule.
        for _ in 0..MAX_SLOTS_SEARCHED {
            if times.len() >= left {
                break;
            }
            let Some(slot) = self.next_slot(cursor) else {
                break;
            };
            cursor = match self.excluded_by(slot.at) {
                // The rest of an excluded day holds nothing to list.
                Some(calendar) => calendar.end_of_day(slot.at).max(slot.at),
                None => {
                    if !slot.is_dropped() {
                        times.push(slot.at);
                    }
                    slot.at
                }
            };
        }
        times
    }

    /// A canonical description of when the job fires: different when the slots differ.
    pub fn schedule_key(&self) -> String {
        self.schedules()
            .map(Schedule::key)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The job's schedules and calendars in plain English, as the API and the status page show them.
    pub fn describe_schedule(&self) -> String {
        let mut text = self
            .schedules()
            .map(Schedule::describe)
            .collect::<Vec<_>>()
            .join("; and ");
        if !self.calendars.is_empty() {
            let names: Vec<&str> = self.calendars.iter().map(|c| c.name.as_str()).collect();
            text.push_str(&format!("; except on days in {}", names.join(", ")));
        }
        text
    }

    /// The job file that validates back to this definition.
    pub fn to_spec(&self) -> JobSpec {
        JobSpec {
            id: self.id.to_string(),
            description: self.description.clone(),
            schedule: ScheduleSpec::of(&self.schedule),
            more_schedules: self.more_schedules.iter().map(ScheduleSpec::of).collect(),
            calendars: self.calendars.iter().map(Calendar::to_spec).collect(),
            task: self.task.clone(),
            pool: self.pool.clone(),
            timeout: self.timeout,
            misfire: self.misfire,
            retry: self.retry,
            overlap: self.overlap,
            paused: self.paused,
            start_at: self.start_at,
            end_at: self.end_at,
            max_runs: self.max_runs,
            jitter: self.jitter,
            priority: self.priority,
            shards: (self.shards > 1).then_some(self.shards),
            shard_params: self.shard_params.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// The job file's schema in the API's document, written by hand: its durations, schedules and
/// tagged task types are strings and objects with a grammar serde does not describe. Named
/// `JobDefinition` there, as users know it.
const JOB_FILE_SCHEMA: &str = include_str!("job_schema.json");

impl utoipa::PartialSchema for JobSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        serde_json::from_str(JOB_FILE_SCHEMA).expect("job_schema.json is a schema")
    }
}

impl utoipa::ToSchema for JobSpec {
    fn name() -> std::borrow::Cow<'static, str> {
        "JobDefinition".into()
    }
}

/// How a service keeps a validated [`JobDefinition`] in its own store, as a serde `with` module:
/// written as the job file that validates back to it ([`JobDefinition::to_spec`]), the form
/// earlier releases stored. Reading it back checks no rule again, so a definition accepted once
/// stays accepted when the rules change between releases, and leaves each cron pattern to be
/// compiled when the schedule is first evaluated. It fails only on what this release cannot
/// read (a time zone, cron nickname or weekday name it does not know, a field it does not have).
/// Only for a service's own store: a definition from outside goes through [`JobSpec::validate`].
pub mod stored {
    use super::{JobDefinition, JobSpec};
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        definition: &JobDefinition,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        definition.to_spec().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<JobDefinition, D::Error> {
        JobSpec::deserialize(deserializer)?
            .read_stored()
            .map_err(D::Error::custom)
    }

    /// The same for a definition that may be absent (a deleted job).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            definition: &Option<JobDefinition>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            definition
                .as_ref()
                .map(JobDefinition::to_spec)
                .serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<JobDefinition>, D::Error> {
            Option::<JobSpec>::deserialize(deserializer)?
                .map(JobSpec::read_stored)
                .transpose()
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).unwrap()
    }

    const SHELL: &str = r#""task": {"shell": {"command": ["echo", "hi"]}}"#;

    /// A record of a service's store holding a definition.
    #[derive(Debug, Serialize, Deserialize)]
    struct Kept {
        #[serde(with = "stored")]
        definition: JobDefinition,
    }

    #[test]
    fn a_stored_definition_reads_back_as_it_was_validated() {
        // Given a validated definition with every kind of schedule, a calendar and shards
        let definition = spec(&format!(
            r#"{{"id": "billing", "schedule": {{"cron": "0 30 2 * * MON-FRI", "timezone": "America/New_York", "dst_gap": "skip"}},
                "more_schedules": [{{"every": "90s"}}, {{"at": "2030-01-01T00:00:00.123456Z"}}],
                "calendars": [{{"name": "holidays", "dates": ["2030-12-25"], "weekdays": ["sat"]}}],
                "shards": 3, "max_runs": 10, {SHELL}}}"#
        ))
        .validate()
        .unwrap();
        // When a service stores it and reads it back
        let bytes = serde_json::to_vec(&Kept {
            definition: definition.clone(),
        })
        .unwrap();
        let read: Kept = serde_json::from_slice(&bytes).unwrap();
        // Then it is the same definition, stored as the job file earlier releases stored
        assert_eq!(read.definition, definition);
        let as_before = serde_json::json!({ "definition": definition.to_spec() });
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            as_before
        );
        let from = "2030-12-24T00:00:00Z".parse().unwrap();
        assert_eq!(
            read.definition.upcoming(from, 5, 0),
            definition.upcoming(from, 5, 0)
        );
    }

    #[test]
    fn a_stored_definition_is_not_checked_against_the_rules_again() {
        // Given a store record that today's rules refuse (a pool name and max_runs no release
        // accepts now), as a change of the rules between releases would leave behind
        let record = format!(
            r#"{{"definition": {{"id": "old", "schedule": {{"every": "1m"}}, "pool": "old pool!", "max_runs": 0, {SHELL}}}}}"#
        );
        assert!(spec(&record[15..record.len() - 1]).validate().is_err());
        // When it is read back, then it is the definition it was accepted as
        let read: Kept = serde_json::from_str(&record).unwrap();
        assert_eq!(read.definition.pool, "old pool!");
        assert_eq!(read.definition.max_runs, Some(0));
        // And a zone this release does not know makes the record unreadable, not the job deleted
        let unknown_zone = r#"{"definition": {"id": "x", "schedule": {"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "task": {"shell": {"command": ["true"]}}}}"#;
        let err = serde_json::from_str::<Kept>(unknown_zone).unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn a_valid_job_round_trips_through_its_spec() {
        let s = spec(&format!(
            r#"{{"id": "nightly.report", "schedule": {{"cron": "0 0 3 * * *", "timezone": "Europe/Berlin"}}, {SHELL}, "timeout": "30s"}}"#
        ));
        let def = s.validate().unwrap();
        assert_eq!(def.pool, DEFAULT_POOL);
        assert_eq!(def.timeout, Some(Duration::from_secs(30)));
        assert_eq!(def.to_spec().validate().unwrap(), def);
    }

    #[test]
    fn every_rejection_names_what_is_wrong() {
        let cases = [
            (
                format!(r#"{{"id": "a b", "schedule": {{"every": "1s"}}, {SHELL}}}"#),
                "invalid job id",
            ),
            (
                format!(r#"{{"id": "a", "schedule": {{}}, {SHELL}}}"#),
                "exactly one of",
            ),
            (
                format!(r#"{{"id": "a", "schedule": {{"cron": "* * *"}}, {SHELL}}}"#),
                "invalid cron",
            ),
            (
                format!(
                    r#"{{"id": "a", "schedule": {{"cron": "0 * * * * *", "timezone": "Nowhere/X"}}, {SHELL}}}"#
                ),
                "unknown time zone",
            ),
            (
                r#"{"id": "a", "schedule": {"every": "1s"}, "task": {"shell": {"command": []}}}"#
                    .to_string(),
                "must name a program",
            ),
            (
                r#"{"id": "a", "schedule": {"every": "1s"}, "task": {"http": {"url": "ftp://x"}}}"#
                    .to_string(),
                "http(s) URL",
            ),
            (
                format!(r#"{{"id": "a", "schedule": {{"every": "1s"}}, {SHELL}, "pool": "a/b"}}"#),
                "invalid pool",
            ),
            (
                format!(r#"{{"id": "a", "schedule": {{"every": "1s", "dst_gap": "skip"}}, {SHELL}}}"#),
                "`dst_gap` only applies to `cron`",
            ),
            (
                format!(
                    r#"{{"id": "a", "schedule": {{"every": "1s"}}, "more_schedules": [{{"every": "2s"}}, {{"cron": "0 0 12 ? * 0"}}], {SHELL}}}"#
                ),
                "more_schedules[1]: schedule: invalid cron expression \"0 0 12 ? * 0\": field 6 (day-of-week)",
            ),
            (
                format!(
                    r#"{{"id": "a", "schedule": {{"every": "1s"}}, "calendars": [{{"name": "h", "weekdays": ["sun"]}}, {{"name": "h", "dates": ["2027-01-01"]}}], {SHELL}}}"#
                ),
                "calendar \"h\" is listed twice",
            ),
            (
                format!(
                    r#"{{"id": "a", "schedule": {{"every": "1s"}}, "calendars": [{{"name": "h", "timezone": "Nowhere/X", "weekdays": ["sun"]}}], {SHELL}}}"#
                ),
                "calendar \"h\": unknown time zone",
            ),
        ];
        for (json, expected) in cases {
            let err = spec(&json).validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn oversized_payload_is_rejected_with_the_limit() {
        let body = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        let s = spec(&format!(
            r#"{{"id": "a", "schedule": {{"every": "1s"}}, "task": {{"http": {{"url": "http://127.0.0.1/", "body": "{body}"}}}}}}"#
        ));
        let err = s.validate().unwrap_err();
        assert!(matches!(
            err,
            ValidationError::PayloadTooLarge {
                field: "task.http.body",
                ..
            }
        ));
    }

    #[test]
    fn unknown_fields_are_rejected_by_the_file_format() {
        let err = serde_json::from_str::<JobSpec>(
            r#"{"id": "a", "schedule": {"every": "1s"}, "task": {"shell": {"command": ["x"]}}, "retires": 3}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("retires"), "{err}");
    }
}
