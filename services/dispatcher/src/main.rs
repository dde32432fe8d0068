use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_dispatcher::Config::parse();
    kairos_runtime::telemetry::init_tracing(config.log_format);
    kairos_dispatcher::run(config, kairos_runtime::telemetry::shutdown_signal()).await
}
