//! nats-server through async-nats, as a benchmark transport: core NATS for messages,
//! JetStream key-value for retained state (a retained publish is a KV put, and a
//! subscription also watches the KV keys it covers).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use avbus::bench::{Conn, Feed, Transport, BENCH_QUEUE};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

pub struct NatsTransport {
    pub port: u16,
    /// Whether JetStream answered (otherwise `snapshot` is n/a).
    pub kv: bool,
}

const BUCKET: &str = "avbus_bench";

/// `a/b/+/#` → `a.b.*.>`.
fn subject(topic: &str) -> String {
    topic
        .split('/')
        .map(|l| match l {
            "+" => "*",
            "#" => ">",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

struct NatsConn {
    client: async_nats::Client,
    kv: Option<kv::Store>,
}

impl NatsTransport {
    /// Connects once to create the KV bucket (in memory); on failure, `snapshot` is
    /// n/a and the error says why.
    pub async fn new(port: u16) -> (NatsTransport, Option<String>) {
        let made = async {
            let client = async_nats::connect(format!("127.0.0.1:{port}"))
                .await
                .map_err(|e| e.to_string())?;
            let js = jetstream::new(client);
            js.create_key_value(kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        let error = made.as_ref().err().cloned();
        (
            NatsTransport {
                port,
                kv: made.is_ok(),
            },
            error,
        )
    }
}

impl Transport for NatsTransport {
    fn system(&self) -> &str {
        "nats"
    }

    fn retains(&self) -> bool {
        self.kv
    }

    fn connect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Conn>, String>> {
        Box::pin(async move {
            let client = async_nats::ConnectOptions::new()
                .name(name)
                .subscription_capacity(BENCH_QUEUE)
                .connect(format!("127.0.0.1:{}", self.port))
                .await
                .map_err(|e| e.to_string())?;
            let kv = if self.kv {
                jetstream::new(client.clone())
                    .get_key_value(BUCKET)
                    .await
                    .ok()
            } else {
                None
            };
            Ok(Box::new(NatsConn { client, kv }) as Box<dyn Conn>)
        })
    }
}

impl Conn for NatsConn {
    fn subscribe<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Feed, String>> {
        Box::pin(async move {
            let subject = subject(filter);
            // The client's own subscription stream, read directly (no task between).
            let core = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| e.to_string())?
                .map(|m| m.payload);
            let feed: Feed = match &self.kv {
                Some(kv) => {
                    let watch = kv
                        .watch(subject)
                        .await
                        .map_err(|e| e.to_string())?
                        .take_while(|e| std::future::ready(e.is_ok()))
                        .filter_map(|e| {
                            std::future::ready(match e {
                                Ok(entry) if entry.operation == kv::Operation::Put => {
                                    Some(entry.value)
                                }
                                _ => None,
                            })
                        });
                    futures_util::stream::select(core, watch).boxed()
                }
                None => core.boxed(),
            };
            // The SUB has reached the server once a PING after it is answered.
            self.client.flush().await.map_err(|e| e.to_string())?;
            Ok(feed)
        })
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        retain: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let subject = subject(topic);
            match (&self.kv, retain) {
                (Some(kv), true) if payload.is_empty() => {
                    kv.purge(subject).await.map_err(|e| e.to_string())
                }
                (Some(kv), true) => kv
                    .put(subject, payload)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                _ => self
                    .client
                    .publish(subject, payload)
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            tokio::time::timeout(Duration::from_secs(30), self.client.flush())
                .await
                .map_err(|_| "nats: flush timed out".to_string())?
                .map_err(|e| e.to_string())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.client.drain().await;
        })
    }
}
