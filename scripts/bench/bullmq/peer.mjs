// The BullMQ peer of Kairos's benchmark: the precision and throughput scenarios of
// tests/src/bench.rs, in the same shapes, run with BullMQ against a Redis that
// scripts/bench/peer.sh starts. Prints one JSON object on stdout; progress goes to stderr.
//   node peer.mjs --redis-port P [--smoke] [--precision-rates 1000,200] [--precision-span 10]
//                 [--throughput-rates 100,200,400,800,1600,3200] [--throughput-step 15]
// Defaults are BenchConfig::full's (or BenchConfig::smoke's with --smoke).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

// BullMQ and ioredis are installed under the cache by scripts/lib.sh's ensure_bullmq
// ($BULLMQ_DIR); without it, `npm ci` beside this file works too.
const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(process.env.BULLMQ_DIR || here, 'package.json'));
const { Queue, Worker } = require('bullmq');
const ioredis = require('ioredis');
const Redis = ioredis.default ?? ioredis.Redis ?? ioredis;
const bullmqVersion = require('bullmq/package.json').version;

// No-op processors on a 2-core machine (Redis on one core, this process on the other): the
// concurrency only bounds the jobs in flight between Redis round trips, and 50 keeps this
// process's connection busy without queueing hundreds of Lua calls behind each other.
// Completed jobs are kept (BullMQ's default, no removeOnComplete), as Kairos keeps its ledger.
const CONCURRENCY = 50;

const { values: args } = parseArgs({
  options: {
    'redis-port': { type: 'string' },
    smoke: { type: 'boolean', default: false },
    'precision-rates': { type: 'string' },
    'precision-span': { type: 'string' },
    'throughput-rates': { type: 'string' },
    'throughput-step': { type: 'string' },
  },
});
if (!args['redis-port']) throw new Error('--redis-port is required');
const defaults = args.smoke
  ? { precisionRates: '50', precisionSpan: '2', throughputRates: '20,40', throughputStep: '2' }
  : { precisionRates: '1000,200', precisionSpan: '10', throughputRates: '100,200,400,800,1600,3200', throughputStep: '15' };
const numbers = (s) => (s ? s.split(',').map(Number) : []); // an empty list skips the scenario
const config = {
  precisionRates: numbers(args['precision-rates'] ?? defaults.precisionRates),
  precisionSpan: Number(args['precision-span'] ?? defaults.precisionSpan),
  throughputRates: numbers(args['throughput-rates'] ?? defaults.throughputRates),
  throughputStep: Number(args['throughput-step'] ?? defaults.throughputStep),
};
const connection = { host: '127.0.0.1', port: Number(args['redis-port']) };

// One clock for due times, enqueue times and start times: wall-clock milliseconds with
// sub-millisecond resolution (BullMQ itself schedules by Date.now(), the same clock).
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const log = (...what) => console.error('peer:', ...what);

// Nearest-rank percentiles, as Distribution::of in bench.rs computes them.
function distribution(samples) {
  if (samples.length === 0) return { count: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const sorted = Float64Array.from(samples).sort();
  const rank = (q) => sorted[Math.min(Math.max(Math.ceil(q * sorted.length), 1), sorted.length) - 1];
  const round = (x) => Math.round(x * 1000) / 1000;
  return {
    count: sorted.length,
    p50: round(rank(0.5)),
    p90: round(rank(0.9)),
    p99: round(rank(0.99)),
    max: round(sorted[sorted.length - 1]),
  };
}

// CPU time (user + system) the redis-server process has used, in ms, from /proc/<pid>/stat.
const ticksPerSec = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
let redisPid;
function redisCpuMs() {
  // Fields 14 and 15 (utime, stime) counted from after the parenthesised command name.
  const fields = readFileSync(`/proc/${redisPid}/stat`, 'utf8').split(')').pop().trim().split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSec;
}
// Redis's and this process's CPU per job over a stretch of the run.
function cpuMeter() {
  const redis0 = redisCpuMs();
  const node0 = process.cpuUsage();
  return (jobs) => {
    const node = process.cpuUsage(node0);
    const per = (ms) => (jobs > 0 ? Math.round((ms / jobs) * 1000) / 1000 : null);
    return { redis_cpu_ms_per_job: per(redisCpuMs() - redis0), node_cpu_ms_per_job: per((node.user + node.system) / 1000) };
  };
}

// N one-off jobs due at `rate` per second, all added ahead of time as delayed jobs, each due
// at first + n/rate; lateness is from the due time to the processor's start.
async function precision(rate, spanSecs) {
  const count = Math.floor(rate * spanSecs);
  const queue = new Queue(`precision-${rate}`, { connection });
  const lateness = [];
  const seen = new Set();
  let allStarted;
  const started = new Promise((resolve) => (allStarted = resolve));
  const worker = new Worker(
    queue.name,
    async (job) => {
      const at = now();
      if (seen.has(job.id)) return; // a retried job counts once, as its first start
      seen.add(job.id);
      lateness.push(at - job.data.due);
      if (lateness.length >= count) allStarted();
    },
    { connection, concurrency: CONCURRENCY },
  );
  await Promise.all([queue.waitUntilReady(), worker.waitUntilReady()]);
  // The same lead as bench.rs: 5 s plus 0.5 ms a job to define them all.
  const first = Math.ceil(now() + 5000 + 0.5 * count);
  const due = (n) => first + Math.round((n * 1000) / rate);
  const meter = cpuMeter();
  for (let from = 0; from < count; from += 1000) {
    // BullMQ makes a job due at opts.timestamp + opts.delay; stating both pins it to its slot.
    const timestamp = Date.now();
    const jobs = [];
    for (let n = from; n < Math.min(from + 1000, count); n++) {
      jobs.push({ name: 'fire', data: { due: due(n) }, opts: { timestamp, delay: due(n) - timestamp } });
    }
    await queue.addBulk(jobs);
  }
  if (now() >= first) throw new Error(`adding ${count} jobs took until after the first was due`);
  log(`precision ${rate}/s: ${count} jobs added, first due in ${Math.round(first - now())} ms`);
  await Promise.race([started, sleep(due(count - 1) - now() + 60_000)]);
  const cpu = meter(lateness.length);
  await worker.close();
  await queue.close();
  const { count: _, ...toTaskStart } = distribution(lateness);
  const result = { fires_per_sec: rate, jobs: count, to_task_start: toTaskStart, not_started: count - lateness.length, ...cpu };
  log(`precision ${rate}/s:`, JSON.stringify(result));
  return result;
}

// No-op jobs offered at each rate in turn for `stepSecs`, until a level saturates.
async function throughput(rates, stepSecs) {
  const queue = new Queue('throughput', { connection });
  let level = null; // the level being measured: its enqueue→completion latencies
  const worker = new Worker(queue.name, async () => {}, { connection, concurrency: CONCURRENCY });
  worker.on('completed', (job) => {
    if (!level || job.data.level !== level.index) return;
    level.latencies.push(now() - job.data.t);
    level.lastDone = now();
    if (level.latencies.length >= level.total) level.done();
  });
  await Promise.all([queue.waitUntilReady(), worker.waitUntilReady()]);
  const levels = [];
  for (const [index, rate] of rates.entries()) {
    const total = Math.round(rate * stepSecs);
    const finished = new Promise((done) => (level = { index, total, latencies: [], done }));
    const meter = cpuMeter();
    // Paced as bench.rs's produce_paced: every tick (10 ms, or one interval if longer), add
    // the jobs due by then, one `add` each as an application would, without awaiting each.
    const began = now();
    level.lastDone = began;
    const tick = Math.max(10, 1000 / rate);
    const adds = [];
    for (let sent = 0; sent < total; ) {
      await sleep(tick - ((now() - began) % tick));
      const dueNow = Math.min(total, Math.floor(((now() - began) / 1000) * rate));
      for (; sent < dueNow; sent++) adds.push(queue.add('run', { level: index, t: now() }));
    }
    await Promise.all(adds);
    await Promise.race([finished, sleep(began + stepSecs * 2000 + 30_000 - now())]);
    const elapsed = Math.max(level.lastDone - began, 1) / 1000;
    const completed = level.latencies.length;
    const runsPerSec = completed / elapsed;
    const latency = distribution(level.latencies);
    const result = {
      offered_per_sec: rate,
      runs: total,
      completed,
      elapsed_secs: Math.round(elapsed * 1000) / 1000,
      runs_per_sec: Math.round(runsPerSec * 10) / 10,
      p50_ms: latency.p50,
      p99_ms: latency.p99,
      saturated: completed < total || runsPerSec < 0.9 * rate,
      ...meter(completed),
    };
    log(`throughput ${rate}/s:`, JSON.stringify(result));
    levels.push(result);
    if (result.saturated) break;
  }
  await worker.close();
  await queue.close();
  // No saturated level means the ladder ran out first: the best rate is then a lower bound.
  const saturated = levels.find((l) => l.saturated);
  return {
    levels,
    best_runs_per_sec: Math.max(0, ...levels.map((l) => l.runs_per_sec)),
    saturated_at_per_sec: saturated ? saturated.offered_per_sec : null,
  };
}

const redis = new Redis(connection);
const info = Object.fromEntries(
  (await redis.info('server'))
    .split(/\r?\n/)
    .filter((line) => line.includes(':'))
    .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
);
redisPid = Number(info.process_id);
// How Redis was set up; hz matters: an idle Redis times out a blocked BZPOPMIN (how a BullMQ
// worker waits for its next delayed job) only on its cron tick, every 1/hz seconds.
const redisConfig = {};
for (const name of ['hz', 'appendonly', 'appendfsync', 'save']) {
  const [, value] = await redis.config('GET', name);
  redisConfig[name] = value;
}
const machine = { cpus: cpus().length, loadavg_at_start: loadavg().map((l) => Math.round(l * 100) / 100) };
const meter = cpuMeter();
const precisionResults = [];
for (const rate of config.precisionRates) precisionResults.push(await precision(rate, config.precisionSpan));
const throughputResult = await throughput(config.throughputRates, config.throughputStep);
const processed =
  precisionResults.reduce((sum, p) => sum + p.jobs - p.not_started, 0) +
  throughputResult.levels.reduce((sum, l) => sum + l.completed, 0);
const { redis_cpu_ms_per_job } = meter(processed);
await redis.quit();
console.log(
  JSON.stringify({
    peer: 'bullmq',
    bullmq_version: bullmqVersion,
    redis_version: info.redis_version,
    redis_config: redisConfig,
    node_version: process.versions.node,
    worker_concurrency: CONCURRENCY,
    machine,
    config: {
      precision_rates: config.precisionRates,
      precision_span_secs: config.precisionSpan,
      throughput_rates: config.throughputRates,
      throughput_step_secs: config.throughputStep,
    },
    precision: precisionResults,
    throughput: throughputResult,
    jobs_processed: processed,
    redis_cpu_ms_per_job,
  }),
);
process.exit(0);
