//! The trigger: turns job definitions into `RunScheduled` events when their slots come due.
//!
//! It consumes `jobs` and its own changelog `trigger-state` (co-partitioned, one consumer group).
//! RocksDB holds each job's definition and the last slot handled for it; an in-memory index of next
//! fire times is built from RocksDB when a partition has caught up. A slot is fired by appending
//! `RunScheduled` (or `RunSkipped{misfire}`) to the ledger, then recording it in `trigger-state`;
//! a crash between the two re-fires the same slot, which yields the same run_id and is dropped
//! downstream. Nothing fires for a partition until it has caught up on both topics.
//!
//! Slots are fired `--fire-ahead` before they are due, so that the run is dispatched and held
//! on its worker by then: the worker starts it at its slot by its own clock. Set the lead above
//! the pipeline's latency from fire to worker (`kairos_worker_task_lead_seconds` shows how early
//! tasks arrive; `kairos_worker_tasks_arrived_late_total` counts those that came too late).

mod index;
mod metrics_names;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kairos_core::audit::slots_counted_from;
use kairos_core::decide::{due_fires, fire_event, fire_time, next_fire_due, Fire, SlotCursor};
use kairos_core::job::stored;
use kairos_core::run::{RunEvent, RunEventKind, SkipReason};
use kairos_core::schedule::Schedule;
use kairos_core::{JobDefinition, Timestamp};
use kairos_runtime::codec::{self, TriggerState};
use kairos_runtime::kafka::{check_co_partitioning, ReliableProducer, ServiceKind};
use kairos_runtime::ledger::Ledger;
use kairos_runtime::record_loop::{self, Decoded, Folded, Live, Record, StatefulService};
use kairos_runtime::{record_time, ServiceArgs, ServiceParts, ServiceSpec, StoreArgs};
use kairos_runtime::{Batch, KafkaArgs, Store, Topics};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};

use crate::index::DueIndex;
use crate::metrics_names as m;

/// Most slots handled for one job in one pass, so a long backlog cannot starve other jobs.
const MAX_SLOTS_PER_JOB: usize = 1000;
/// Most fires sent in one pass, so that a burst of due jobs is sent in bounded rounds.
const MAX_FIRES_PER_PASS: usize = 5000;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "kairos-trigger",
    version,
    about = "Fires due job slots onto the run ledger.",
    mut_arg("metrics_addr", |a| a.default_value("127.0.0.1:9401")),
    mut_arg("data_dir", |a| a.default_value(".kairos/data/trigger")),
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How long before a slot is due it is fired, so that its task is on its worker, waiting,
    /// when the slot comes. 0 fires at the slot (the task then starts after the pipeline's
    /// latency).
    #[arg(long, env = "KAIROS_FIRE_AHEAD", default_value = "1s", value_parser = humantime::parse_duration)]
    pub fire_ahead: Duration,
}

/// The default of `--fire-ahead`.
pub const DEFAULT_FIRE_AHEAD: Duration = Duration::from_secs(1);

impl Config {
    /// Defaults for a broker and prefix, as tests and embedders need.
    pub fn new(kafka: KafkaArgs, data_dir: PathBuf, metrics_addr: SocketAddr) -> Self {
        Config {
            service: ServiceArgs::new(kafka, metrics_addr),
            store: StoreArgs { data_dir },
            fire_ahead: DEFAULT_FIRE_AHEAD,
        }
    }
}

/// A job as the trigger stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct StoredJob {
    #[serde(rename = "spec", with = "stored")]
    definition: JobDefinition,
    /// Offset of the definition on the jobs topic.
    offset: i64,
    /// When the definition was written: slots at or before it are never fired for it.
    written_at: Timestamp,
}

fn job_key(partition: i32, job: &str) -> String {
    format!("job/{partition:05}/{job}")
}

/// A job ready to fire: its definition and where its schedule stands.
struct Loaded {
    definition: JobDefinition,
    offset: i64,
    cursor: SlotCursor,
}

/// The last slot handled for a job, and the schedule it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    last_slot: Timestamp,
    schedule: String,
    /// Slots of the job that have run, for `max_runs`.
    #[serde(default)]
    fired: u32,
}

fn cursor_key(partition: i32, job: &str) -> String {
    format!("cursor/{partition:05}/{job}")
}

/// Runs the trigger until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = config.service.kafka.topics();
    let (group, inputs) = topics.consumes(&ServiceKind::Trigger);
    check_co_partitioning(
        &config.service.kafka,
        &[topics.jobs(), topics.trigger_state(), topics.runs()],
    )?;
    let store = config.store.open()?;
    let spec = ServiceSpec {
        name: "trigger",
        args: &config.service,
        group,
        inputs: &inputs,
        store: Some(store.clone()),
    };
    let parts = ServiceParts::start(spec, shutdown).await?;
    m::register();
    let mut trigger = Trigger {
        topics,
        store: store.clone(),
        producer: parts.producer.clone(),
        ledger: parts.ledger(),
        index: DueIndex::default(),
        lead: config.fire_ahead,
        forgotten: vec![],
    };
    parts.run(&mut trigger, &store).await
}

struct Trigger {
    topics: Topics,
    store: Store,
    producer: ReliableProducer,
    ledger: Ledger,
    index: DueIndex,
    /// How long before its fire time a slot is fired (`--fire-ahead`).
    lead: Duration,
    /// Jobs deleted by the records being folded, whose cursors the changelog forgets.
    forgotten: Vec<String>,
}

impl StatefulService for Trigger {
    type Wake = ();
    /// Records first: a pass of fires is bounded, and the records keep the index current.
    const WAKE_FIRST: bool = false;

    fn fold(&mut self, record: Record<'_>, batch: &mut Batch) -> anyhow::Result<Folded> {
        let partition = record.message.partition();
        let job = match record.value {
            Decoded::Definition(definition) => {
                let written_at = record_time(record.message).unwrap_or_else(chrono::Utc::now);
                let job = definition.id.to_string();
                let stored = StoredJob {
                    definition: *definition,
                    offset: record.message.offset(),
                    written_at,
                };
                batch.put(&job_key(partition, &job), &stored);
                tracing::info!(
                    job_id = job,
                    offset = record.message.offset(),
                    "Job defined."
                );
                job
            }
            Decoded::JobDeleted(job) => {
                batch.delete(&job_key(partition, &job));
                batch.delete(&cursor_key(partition, &job));
                // Forget the cursor in the changelog too, or a rebuild would bring it back.
                self.forgotten.push(job.clone());
                tracing::info!(job_id = job, "Job deleted.");
                job
            }
            Decoded::Cursor(state) => {
                let job = state.job_id.to_string();
                apply_cursor(&self.store, batch, partition, state)?;
                job
            }
            Decoded::CursorDeleted(job) => {
                batch.delete(&cursor_key(partition, &job));
                job
            }
            _ => return Ok(Folded::Unchanged),
        };
        Ok(Folded::Touched(job))
    }

    async fn send_folded(&mut self) -> anyhow::Result<()> {
        if self.forgotten.is_empty() {
            return Ok(());
        }
        let changelog = self.topics.trigger_state();
        let forgotten = std::mem::take(&mut self.forgotten);
        let sends = forgotten
            .iter()
            .map(|job| self.producer.send(&changelog, job, None));
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn caught_up(&mut self, partition: i32, _live: &Live) -> anyhow::Result<()> {
        self.index_partition(partition)
    }

    async fn touched(&mut self, partition: i32, job: &str, _live: &Live) -> anyhow::Result<()> {
        self.reindex(partition, job)
    }

    fn revoked(&mut self, partitions: &[i32]) {
        for &partition in partitions {
            self.index.drop_partition(partition);
        }
    }

    async fn woken(&mut self) -> anyhow::Result<()> {
        record_loop::sleep_until(self.index.next_due()).await;
        Ok(())
    }

    async fn wake(&mut self, (): (), live: &Live) -> anyhow::Result<()> {
        self.fire_due(live).await
    }
}

/// A changelog record: the last slot handled for a job (possibly by another instance). A cursor
/// only moves forward within a schedule.
fn apply_cursor(
    store: &Store,
    batch: &mut Batch,
    partition: i32,
    state: TriggerState,
) -> anyhow::Result<()> {
    let key = cursor_key(partition, state.job_id.as_str());
    let current: Option<Cursor> = batch.get(store, &key)?;
    if current.is_none_or(|c| c.schedule != state.schedule || c.last_slot < state.last_slot) {
        let cursor = Cursor {
            last_slot: state.last_slot,
            schedule: state.schedule,
            fired: state.fired,
        };
        batch.put(&key, &cursor);
    }
    Ok(())
}

impl Trigger {
    /// A partition has caught up: index its jobs, then fire what came due while nobody owned it.
    fn index_partition(&mut self, partition: i32) -> anyhow::Result<()> {
        // Only the ids: each definition is read once, by `reindex`, and not all held at once.
        let prefix = job_key(partition, "");
        let jobs = self.store.keys(&prefix)?;
        tracing::info!(
            partition,
            jobs = jobs.len(),
            "Partition caught up; firing resumes."
        );
        for key in jobs {
            if let Some(job) = key.strip_prefix(&prefix) {
                self.reindex(partition, job)?;
            }
        }
        metrics::counter!(m::REBUILDS).increment(1);
        Ok(())
    }

    /// Recomputes when a job fires next from the store.
    fn reindex(&mut self, partition: i32, job: &str) -> anyhow::Result<()> {
        match self.load(partition, job)? {
            Some(loaded) => self.schedule_next(partition, &loaded),
            None => self.index.remove(job),
        }
        Ok(())
    }

    /// Puts the job's next fire time in the index, or takes it out when it has none.
    fn schedule_next(&mut self, partition: i32, loaded: &Loaded) {
        let job = loaded.definition.id.as_str();
        match next_fire_due(&loaded.definition, loaded.cursor, self.lead) {
            Some(due) => self.index.set(partition, job, due),
            None => self.index.remove(job),
        }
    }

    /// The lead as a signed duration, to take from a fire time.
    fn lead_delta(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.lead).unwrap_or_default()
    }

    /// The job's validated definition and where its slots are counted from.
    fn load(&self, partition: i32, job: &str) -> anyhow::Result<Option<Loaded>> {
        let Some(stored) = self
            .store
            .get_readable::<StoredJob>(&job_key(partition, job))?
        else {
            return Ok(None);
        };
        let last: Option<Cursor> = self.store.get(&cursor_key(partition, job))?;
        let definition = stored.definition;
        if let Some(reason) = definition.schedules().find_map(Schedule::unreadable) {
            tracing::error!(job_id = job, reason, "Stored schedule cannot be evaluated by this release; not firing it until the job is written again.");
            return Ok(None);
        }
        let cursor = SlotCursor {
            last_slot: slots_counted_from(
                last.as_ref().map(|c| (c.schedule.as_str(), c.last_slot)),
                &definition.schedule_key(),
                stored.written_at,
            ),
            fired: last.map_or(0, |c| c.fired),
        };
        Ok(Some(Loaded {
            definition,
            offset: stored.offset,
            cursor,
        }))
    }

    /// Fires every due slot of the due jobs. A pass sends all its ledger records at once (each
    /// job's in slot order); only when the broker has acknowledged them are the jobs' cursors
    /// recorded, in the changelog and then in the store. A crash in between fires the same slots
    /// again, which yields the same run ids, dropped downstream.
    async fn fire_due(&mut self, live: &Live) -> anyhow::Result<()> {
        let now = kairos_runtime::now();
        let mut due: Vec<(i32, Loaded, Vec<Fire>)> = vec![];
        let mut planned = 0;
        for (partition, job) in self.index.due(now) {
            if planned >= MAX_FIRES_PER_PASS {
                break; // The rest are still due: the next pass comes at once.
            }
            if !live.contains(partition) {
                continue;
            }
            let Some(mut loaded) = self.load(partition, &job)? else {
                self.index.remove(&job);
                continue;
            };
            let fires = due_fires(
                &loaded.definition,
                &mut loaded.cursor,
                now,
                self.lead,
                MAX_SLOTS_PER_JOB,
            );
            if fires.is_empty() {
                self.schedule_next(partition, &loaded);
            } else {
                planned += fires.len();
                due.push((partition, loaded, fires));
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let lead = self.lead_delta();
        let sends = due.iter().map(|(_, loaded, fires)| {
            let events: Vec<(RunEvent, Timestamp)> = fires
                .iter()
                .map(|fire| {
                    let to_fire_at = fire_time(&loaded.definition, fire.slot()) - lead;
                    let event = fire_event(&loaded.definition, loaded.offset, *fire, now);
                    (event, to_fire_at)
                })
                .collect();
            let ledger = &self.ledger;
            async move {
                for (event, to_fire_at) in &events {
                    ledger.append(event).await?;
                    record_fire(event, *to_fire_at);
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(sends).await?;

        let changelog = self.topics.trigger_state();
        let mut batch = Batch::new();
        let mut records = Vec::with_capacity(due.len());
        for (partition, loaded, _) in &due {
            let job = &loaded.definition;
            let state = TriggerState {
                job_id: job.id.clone(),
                last_slot: loaded.cursor.last_slot,
                definition_offset: loaded.offset,
                schedule: job.schedule_key(),
                fired: loaded.cursor.fired,
            };
            records.push((job.id.as_str(), codec::encode_trigger_state(&state)?));
            let cursor = Cursor {
                last_slot: state.last_slot,
                schedule: state.schedule,
                fired: state.fired,
            };
            batch.put(&cursor_key(*partition, job.id.as_str()), &cursor);
        }
        let sends = records
            .iter()
            .map(|(job, bytes)| self.producer.send(&changelog, job, Some(bytes)));
        futures::future::try_join_all(sends).await?;
        self.store.write(batch)?;
        for (partition, loaded, _) in &due {
            self.schedule_next(*partition, loaded);
        }
        Ok(())
    }
}

/// Counts an acknowledged fire, and how late it came: past the moment it was to be fired, its
/// fire time less the lead.
fn record_fire(event: &RunEvent, to_fire_at: Timestamp) {
    let slot = event.scheduled_for;
    if let RunEventKind::RunScheduled { .. } = event.kind {
        let lateness = (chrono::Utc::now() - to_fire_at)
            .to_std()
            .unwrap_or_default();
        metrics::counter!(m::FIRES).increment(1);
        metrics::histogram!(m::LATENESS).record(lateness.as_secs_f64());
        tracing::debug!(job_id = %event.job_id, run_id = %event.run_id, %slot, "Fired.");
    } else if let RunEventKind::RunSkipped { reason } = event.kind {
        metrics::counter!(m::SKIPS, "reason" => reason.as_str()).increment(1);
        let why = match reason {
            SkipReason::Misfire => "it was missed and a later slot supersedes it",
            SkipReason::Calendar => "a calendar of the job excludes its day",
            SkipReason::DstGap => {
                "its local time does not exist (DST gap) and the job skips such slots"
            }
            SkipReason::JobDeleted | SkipReason::Overlap => "of the job's policy",
        };
        tracing::info!(job_id = %event.job_id, %slot, "Slot skipped: {why}.");
    }
}
