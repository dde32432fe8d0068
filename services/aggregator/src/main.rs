use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_aggregator::Config::parse();
    kairos_runtime::telemetry::init_tracing(config.log_format);
    kairos_aggregator::run(config, kairos_runtime::telemetry::shutdown_signal()).await
}
