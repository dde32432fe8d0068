//! The long form of the fault-injection suite (`scripts/chaos.sh`): runs the chaos scenario,
//! prints its figures, writes them as JSON with `--report`, and exits non-zero if anything was
//! lost, duplicated, left unfinished or rebuilt differently.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kairos_tests::chaos::{self, ChaosConfig, ChaosReport};

#[derive(Parser)]
#[command(
    name = "kairos-chaos",
    about = "Kill Kairos services at random under load; check the ledger."
)]
struct Args {
    /// Jobs firing every second.
    #[arg(long, default_value_t = 30)]
    jobs: usize,
    /// How long the load and the faults last.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    load: Duration,
    /// Shortest pause between two kills.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pause_min: Duration,
    /// Longest pause between two kills.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pause_max: Duration,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Seed of the fault sequence; random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The Nisshi broker binary.
    #[arg(long, env = "KAIROS_NISSHI", default_value = "nisshi")]
    nisshi: PathBuf,
    /// Where to write the figures as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    // First, so that any run can be replayed, however it ends.
    eprintln!("kairos-chaos: seed {seed} (replay with --seed {seed})");
    let config = ChaosConfig {
        jobs: args.jobs,
        load: args.load,
        pause: (args.pause_min, args.pause_max),
        partitions: args.partitions,
        seed,
        nisshi: args.nisshi,
    };
    // A failure of the harness itself, even a panic, is a report too.
    let report = match tokio::spawn(chaos::run(config)).await {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => ChaosReport::failed(seed, format!("{error:#}")),
        Err(joined) => ChaosReport::failed(seed, format!("the harness panicked: {joined}")),
    };
    println!("{report}");
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(
        report.passed(),
        "the chaos run found lost, duplicated or unfinished work (seed {seed})"
    );
    Ok(())
}
