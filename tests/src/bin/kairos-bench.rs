//! The benchmark harness (`scripts/bench.sh`): measures the service binaries on a broker of its
//! own beside that broker's raw capacity, prints the figures as a Markdown table, and writes them
//! as JSON and Markdown with `--out`. Figures are reported, never judged: it exits non-zero only
//! when a scenario could not run.

use std::path::PathBuf;

use clap::Parser;
use kairos_tests::bench::{self, BenchConfig, Scenario};

#[derive(Parser)]
#[command(
    name = "kairos-bench",
    about = "Measure Kairos on a real broker, beside the broker's own ceiling."
)]
struct Args {
    /// The small form the test suite runs, so that the harness cannot rot.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Job definitions for the scale scenario.
    #[arg(long)]
    scale_jobs: Option<usize>,
    /// Jobs of the recovery scenario.
    #[arg(long)]
    recovery_jobs: Option<usize>,
    /// Fires per second of the precision scenario, one measurement each (10 s of one-off jobs).
    #[arg(long, value_delimiter = ',')]
    fire_rates: Vec<u32>,
    /// Offered loads of the throughput scenario, runs/s.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u32>,
    /// The Nisshi broker binary.
    #[arg(long, env = "KAIROS_NISSHI", default_value = "nisshi")]
    nisshi: PathBuf,
    /// Writes `<out>.json` and `<out>.md`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replaces the benchmark section of this README with the table.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// The peer's figures measured in the same run (`scripts/bench/peer.sh --out FILE`), set
    /// beside Kairos's.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The commit measured, as the report names it.
    #[arg(long, env = "KAIROS_BENCH_COMMIT", default_value = "unknown")]
    commit: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _tracing = kairos_runtime::telemetry::init_tracing(
        &kairos_runtime::telemetry::TelemetryArgs::default(),
        "kairos-bench",
    );
    let args = Args::parse();
    let mut config = if args.smoke {
        BenchConfig::smoke(args.nisshi)
    } else {
        BenchConfig::full(args.nisshi)
    };
    if !args.only.is_empty() {
        config.scenarios = args.only;
    }
    config.scale_jobs = args.scale_jobs.unwrap_or(config.scale_jobs);
    config.recovery_jobs = args.recovery_jobs.unwrap_or(config.recovery_jobs);
    if !args.fire_rates.is_empty() {
        config.precision_rates = args.fire_rates;
    }
    if !args.rates.is_empty() {
        config.throughput_rates = args.rates;
    }
    let binaries = std::env::var("KAIROS_TEST_BIN_DIR")
        .ok()
        .and_then(|dir| {
            PathBuf::from(dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut report = bench::run(config, args.commit, binaries).await?;
    if let Some(peer) = &args.peer {
        let text = std::fs::read_to_string(peer)
            .map_err(|e| anyhow::anyhow!("reading the peer's figures {}: {e}", peer.display()))?;
        report.peer = Some(serde_json::from_str(&text)?);
    }
    let markdown = report.to_markdown();
    println!("{markdown}");
    if let Some(out) = args.out {
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(out.with_extension("md"), &markdown)?;
    }
    if let Some(readme) = args.readme {
        let text = std::fs::read_to_string(&readme)?;
        let updated = bench::replace_section(&text, &markdown).ok_or_else(|| {
            anyhow::anyhow!("{} has no bench:begin/end markers", readme.display())
        })?;
        std::fs::write(&readme, updated)?;
    }
    Ok(())
}
