use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_worker::Config::parse();
    kairos_runtime::telemetry::init_tracing(config.log_format);
    kairos_worker::run(config, kairos_runtime::telemetry::shutdown_signal()).await
}
