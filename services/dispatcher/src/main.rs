use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kairos_dispatcher::Config::parse();
    let _tracing =
        kairos_runtime::telemetry::init_tracing(&config.service.telemetry, "kairos-dispatcher");
    kairos_dispatcher::run(config, kairos_runtime::telemetry::shutdown_signal()).await
}
