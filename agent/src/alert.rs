//! Alerts: one log event per alert, and, when `[alerts]` names a webhook, a
//! JSON POST to it. The body has a `text` field (so a Slack or Mattermost
//! incoming webhook shows it as is) plus the structured fields.
//!
//! Sending never blocks the caller: alerts go through a bounded queue to one
//! sender task that retries each with a growing delay; when the queue is full
//! the alert is dropped and counted (it was logged already).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Alerts waiting to be sent at most.
const QUEUE: usize = 256;

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// What kind (`drill_failed`, `drill_over_objective`…): stable, for
    /// routing rules.
    pub kind: String,
    /// What it is about (a target, a calling AE…).
    pub subject: String,
    /// One line for a person on call.
    pub text: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The device that raised it.
    pub device: String,
}

/// Counters of the sender, for `/metrics`.
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Alerts raised.
    pub raised: AtomicU64,
    /// Webhook deliveries that succeeded.
    pub sent: AtomicU64,
    /// Alerts given up after every attempt, or dropped on a full queue.
    pub failed: AtomicU64,
}

/// Where alerts go.
#[derive(Clone)]
pub struct Alerter {
    device: String,
    tx: Option<tokio::sync::mpsc::Sender<Alert>>,
    /// The sender's counters.
    pub counters: Arc<AlertCounters>,
}

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The URL.
    pub url: String,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts per alert.
    pub attempts: u32,
}

impl Alerter {
    /// The alerter of `[alerts]`: a webhook when `webhook_url` is set, else
    /// log-only (call inside a runtime).
    pub fn from_config(config: &pacs_mirror_config::Config) -> Self {
        match &config.alerts {
            Some(a) if a.webhook_url.is_some() => Alerter::with_webhook(
                &config.device.name,
                Webhook {
                    url: a.webhook_url.clone().unwrap_or_default(),
                    timeout: Duration::from_secs(a.timeout_secs),
                    attempts: a.attempts,
                },
            ),
            _ => Alerter::log_only(&config.device.name),
        }
    }

    /// Log-only alerts.
    pub fn log_only(device: &str) -> Self {
        Alerter {
            device: device.into(),
            tx: None,
            counters: Arc::default(),
        }
    }

    /// Alerts also POSTed to `webhook` by a task on the current runtime.
    pub fn with_webhook(device: &str, webhook: Webhook) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let counters: Arc<AlertCounters> = Arc::default();
        tokio::spawn(send_loop(webhook, rx, counters.clone()));
        Alerter {
            device: device.into(),
            tx: Some(tx),
            counters,
        }
    }

    /// Whether alerts also go to a webhook.
    pub fn has_webhook(&self) -> bool {
        self.tx.is_some()
    }

    /// Raise an alert (returns at once).
    pub fn raise(&self, kind: &str, subject: &str, text: String) {
        self.counters.raised.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(alert = kind, %subject, "{text}");
        let Some(tx) = &self.tx else {
            return;
        };
        let alert = Alert {
            kind: kind.into(),
            subject: subject.into(),
            text: format!("[pacs-mirror {}] {text}", self.device),
            at_ms: crate::unix_ms(),
            device: self.device.clone(),
        };
        if tx.try_send(alert).is_err() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                alert = kind,
                "alert queue full or closed: this alert is only in the log"
            );
        }
    }
}

async fn send_loop(
    webhook: Webhook,
    mut rx: tokio::sync::mpsc::Receiver<Alert>,
    counters: Arc<AlertCounters>,
) {
    let client = match reqwest::Client::builder().timeout(webhook.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client: alerts are only logged");
            return;
        }
    };
    while let Some(alert) = rx.recv().await {
        let mut delay = Duration::from_millis(500);
        let mut sent = false;
        for attempt in 1..=webhook.attempts.max(1) {
            match client.post(&webhook.url).json(&alert).send().await {
                Ok(r) if r.status().is_success() => {
                    sent = true;
                    break;
                }
                Ok(r) => tracing::warn!(status = %r.status(), attempt, "webhook refused an alert"),
                Err(e) => tracing::warn!(error = %e, attempt, "webhook unreachable"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        if sent {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alert = %alert.kind, url = %webhook.url, "alert not delivered after every attempt (it is in this log)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver that fails the first request and accepts the next: the
    /// alert arrives once, with its text.
    #[tokio::test(flavor = "multi_thread")]
    async fn webhook_is_retried_until_accepted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for i in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            bodies.push(text[h + 4..].to_string());
                            break;
                        }
                    }
                }
                let status = if i == 0 {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                s.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            }
            bodies
        });
        let a = Alerter::with_webhook(
            "dev",
            Webhook {
                url,
                timeout: Duration::from_secs(5),
                attempts: 3,
            },
        );
        a.raise("drill_failed", "mirror", "drill of mirror failed".into());
        let bodies = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
        assert_eq!(v["kind"], "drill_failed");
        assert_eq!(v["text"], "[pacs-mirror dev] drill of mirror failed");
        for _ in 0..100 {
            if a.counters.sent.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.counters.sent.load(Ordering::Relaxed), 1);
        assert_eq!(a.counters.raised.load(Ordering::Relaxed), 1);
    }
}
