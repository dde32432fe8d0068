//! Service binaries and a broker run as processes of their own, for the suites that kill,
//! restart and measure them: the chaos suite and the benchmark harness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_addr, get_json, wait_for, Process, Stack};

/// A Nisshi broker of a run's own, so that it can be restarted and measured alone.
pub struct Broker {
    nisshi: PathBuf,
    dir: PathBuf,
    port: u16,
    process: Option<tokio::process::Child>,
}

impl Broker {
    pub async fn start(nisshi: &Path, dir: &Path) -> anyhow::Result<Broker> {
        let mut broker = Broker {
            nisshi: nisshi.to_path_buf(),
            dir: dir.to_path_buf(),
            port: free_addr().port(),
            process: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(tokio::process::Child::id)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let url = format!("tcp://{}", self.address());
        let child = tokio::process::Command::new(&self.nisshi)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://nisshi.db"])
            .current_dir(&self.dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.nisshi.display()))?;
        self.process = Some(child);
        let address = self.address();
        wait_for(
            "the chaos broker to listen",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(&address).await.ok() },
        )
        .await;
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.process.take() {
            terminate(&child);
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
            let _ = child.kill().await;
        }
        self.spawn().await
    }
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// One service instance: how to start it, and its process while it runs.
pub struct Instance {
    pub name: String,
    binary: &'static str,
    args: Vec<String>,
    pub metrics_addr: std::net::SocketAddr,
    pub data_dir: Option<PathBuf>,
    process: Option<Process>,
}

impl Instance {
    pub fn new(
        stack: &Stack,
        name: &str,
        binary: &'static str,
        extra: &[&str],
        stateful: bool,
    ) -> Self {
        let metrics_addr = free_addr();
        let data_dir = stateful.then(|| stack.data_dir(name));
        let mut args = vec!["--metrics-addr".to_string(), metrics_addr.to_string()];
        if let Some(dir) = &data_dir {
            args.extend(["--data-dir".to_string(), dir.display().to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Instance {
            name: name.to_string(),
            binary,
            args,
            metrics_addr,
            data_dir,
            process: None,
        }
    }

    pub fn start(&mut self, stack: &Stack) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = Some(stack.process(&self.name, self.binary, &args));
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Sends `signal` to the process while it runs (SIGSTOP and SIGCONT, to cut it off for a
    /// while as a network partition would).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if let Err(error) = nix::sys::signal::kill(pid, signal) {
                tracing::warn!(%error, instance = self.name, ?signal, "Signalling failed.");
            }
        }
    }

    pub async fn kill9(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9().await;
        }
    }

    /// SIGTERM, and wait for the clean exit (a minute at most, then `kill -9` and an error).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        process.terminate();
        let within = Duration::from_secs(60);
        let status = process.exit_or_kill(within).await.ok_or_else(|| {
            anyhow::anyhow!("{} kept running for {within:?} after SIGTERM", self.name)
        })?;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }

    pub async fn caught_up(&self) -> bool {
        let url = format!("http://{}/healthz", self.metrics_addr);
        get_json(&url).await.is_some_and(|h| h["caught_up"] == true)
    }

    /// Whether the instance says it has caught up, within `within`.
    pub async fn caught_up_within(&self, within: Duration) -> bool {
        crate::poll_until(within, || async { self.caught_up().await.then_some(()) })
            .await
            .is_some()
    }

    pub async fn wait_caught_up(&self, within: Duration) {
        wait_for(&format!("{} to catch up", self.name), within, || async {
            self.caught_up().await.then_some(())
        })
        .await;
    }
}
