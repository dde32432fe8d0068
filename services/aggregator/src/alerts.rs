//! Raising alerts: each goes to the alerts topic, into the recent list the API and status page
//! show, and, when a webhook is configured, onto its delivery queue.
//!
//! Webhook delivery never holds up the pipeline: alerts wait in a bounded queue that a task of its
//! own works off in order, retrying each with backoff. A queue that is full (a webhook down for
//! long) drops the alert, counted; the alerts topic still has it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_core::views::AlertView;
use kairos_runtime::codec::{self, Alert};
use kairos_runtime::kafka::ReliableProducer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;

/// Alerts the API keeps in memory for the status page, newest last.
const RECENT: usize = 100;
/// Alerts waiting for the webhook before new ones are dropped.
const QUEUE: usize = 1000;
/// Delivery attempts per alert, and the backoff between them (doubling up to the cap).
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where alerts go.
#[derive(Clone)]
pub(crate) struct Alerts {
    producer: ReliableProducer,
    topic: String,
    recent: Arc<Mutex<VecDeque<AlertView>>>,
    webhook: Option<mpsc::Sender<AlertView>>,
}

impl Alerts {
    /// Starts delivery to `webhook`, if given, until `shutdown`.
    pub(crate) fn new(
        producer: ReliableProducer,
        topic: String,
        webhook: Option<url::Url>,
        shutdown: CancellationToken,
    ) -> Self {
        let webhook = webhook.map(|url| {
            let (queue, pending) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(url, pending, shutdown));
            queue
        });
        Alerts {
            producer,
            topic,
            recent: Arc::default(),
            webhook,
        }
    }

    /// Records the alert on the alerts topic (waiting out broker outages, like every step of the
    /// pipeline), then hands it to the webhook without waiting.
    pub(crate) async fn raise(&self, alert: &Alert) -> anyhow::Result<()> {
        tracing::warn!(
            job_id = alert.job_id.as_ref().map(|j| j.as_str()),
            run_id = alert.run_id.map(|r| r.to_string()),
            kind = alert.kind.as_str(),
            "{}",
            alert.message
        );
        let bytes = codec::encode_alert(alert)?;
        let headers = kairos_runtime::cloudevents::alert(alert);
        self.producer
            .send_with_headers(&self.topic, alert.key(), Some(&bytes), &headers)
            .await?;
        metrics::counter!(m::ALERTS, "kind" => alert.kind.as_str()).increment(1);
        let body = alert_view(alert);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(body.clone());
        }
        if let Some(queue) = &self.webhook {
            if queue.try_send(body).is_err() {
                tracing::warn!(alert_id = %alert.alert_id, "The webhook queue is full; the alert is only on the alerts topic.");
                metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => "dropped").increment(1);
            }
        }
        Ok(())
    }

    /// The latest alerts raised by this instance, newest first.
    pub(crate) fn recent(&self) -> Vec<AlertView> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

/// An alert as the API and the webhook show it.
pub(crate) fn alert_view(alert: &Alert) -> AlertView {
    AlertView {
        alert_id: alert.alert_id,
        kind: alert.kind.as_str().to_string(),
        job_id: alert.job_id.as_ref().map(ToString::to_string),
        run_id: alert.run_id,
        worker_id: alert.worker_id.clone(),
        pool: alert.pool.clone(),
        message: alert.message.clone(),
        at: alert.at,
    }
}

/// Posts each queued alert to `url` in order, retrying with backoff; gives an alert up after
/// [`ATTEMPTS`], so one bad alert cannot hold the queue for ever.
async fn deliver(
    url: url::Url,
    mut pending: mpsc::Receiver<AlertView>,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "Cannot build the webhook client; alerts go to the alerts topic only.");
            return;
        }
    };
    loop {
        let body = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = pending.recv() => match next {
                Some(body) => body,
                None => return,
            },
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let outcome = match client.post(url.clone()).json(&body).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("the webhook answered {}", response.status())),
                Err(error) => Err(error.to_string()),
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => "delivered").increment(1);
                    break;
                }
                Err(error) if attempt == ATTEMPTS => {
                    tracing::error!(%error, alert_id = %body.alert_id, attempts = ATTEMPTS, "Giving up delivering an alert to the webhook.");
                    metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => "failed").increment(1);
                }
                Err(error) => {
                    tracing::warn!(%error, alert_id = %body.alert_id, attempt, "Delivering an alert to the webhook failed; retrying.");
                    metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => "retried").increment(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
