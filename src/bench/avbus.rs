//! avbus as a benchmark [`Transport`], and the `command` workload that only avbus
//! can run (no peer routes commands to a device's owner).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::{histogram, quantiles, scaled, Conn, Feed, Row, Transport, BENCH_QUEUE, WAIT};
use crate::client::{Client, ClientOptions, SubEvent, Subscription};
use crate::model::{ControlKind, ControlSpec, DeviceDescriptor, Quality};
use crate::protocol::Role;
use crate::value::Value;

/// avbus over TCP, through the Rust client library.
pub struct AvbusTransport {
    addr: String,
}

impl AvbusTransport {
    pub fn new(addr: &str) -> AvbusTransport {
        AvbusTransport { addr: addr.into() }
    }
}

async fn connect(addr: &str, name: &str) -> Result<Client, String> {
    let mut o = ClientOptions::tcp(addr, name).role(Role::Tool);
    o.sub_queue = BENCH_QUEUE;
    o.reconnect = false;
    Client::connect(o).await.map_err(|e| e.to_string())
}

impl Transport for AvbusTransport {
    fn system(&self) -> &str {
        "avbus"
    }

    fn connect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Conn>, String>> {
        Box::pin(async move {
            let c = connect(&self.addr, name).await?;
            Ok(Box::new(AvbusConn(c)) as Box<dyn Conn>)
        })
    }
}

struct AvbusConn(Client);

impl Conn for AvbusConn {
    fn subscribe<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Feed, String>> {
        Box::pin(async move {
            let sub = self
                .0
                .subscribe(&[filter])
                .await
                .map_err(|e| e.to_string())?;
            Ok(sub
                .filter_map(|ev| {
                    std::future::ready(match ev {
                        SubEvent::Update(u) => Some(match u.value {
                            Value::Binary(b) => Bytes::from(b),
                            _ => Bytes::new(),
                        }),
                        _ => None,
                    })
                })
                .boxed())
        })
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        retain: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // An empty retained payload deletes the topic, as in MQTT.
            let value = if payload.is_empty() {
                Value::Nil
            } else {
                Value::Binary(payload.to_vec())
            };
            self.0
                .publish_nowait(topic, value, retain)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), String>> {
        // An acknowledged publish on the same connection: everything before it has
        // been taken by the bus.
        Box::pin(async move {
            self.0
                .publish("bench/flush", Value::Nil, false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.close())
    }
}

/// Waits for the next update on `sub`, or `None` after [`WAIT`].
pub(super) async fn next_update(sub: &mut Subscription) -> Option<crate::protocol::Update> {
    loop {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(SubEvent::Update(u))) => return Some(u),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// `command`: set → adapter → confirmed state back to the panel.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn command(addr: &str, scale: f64) -> Result<Row, String> {
    let adapter = connect(addr, "bench-adapter").await?;
    let mut commands = adapter.commands().await;
    let device = DeviceDescriptor {
        room: "bench".into(),
        name: format!("dev{}", std::process::id()),
        label: "Bench device".into(),
        class: "virtual".into(),
        driver: "bench".into(),
        controls: vec![ControlSpec::new("toggle", ControlKind::Bool)],
    };
    let topic = format!("{}/toggle", device.key());
    let err = |e: crate::client::Error| e.to_string();
    adapter.declare(device, true).await.map_err(err)?;
    adapter
        .publish_state(&topic, Value::Boolean(false), Quality::Ok)
        .await
        .map_err(err)?;
    let a = adapter.clone();
    let responder = tokio::spawn(async move {
        while let Some(cmd) = commands.recv().await {
            let t = cmd.command.topic.clone();
            let v = cmd.command.value.clone();
            let _ = a.publish_state(&t, v, Quality::Ok).await;
            cmd.ok(Value::Nil).await;
        }
    });
    let panel = connect(addr, "bench-panel").await?;
    let mut sub = panel.subscribe(&[&topic]).await.map_err(err)?;
    let n = scaled(5_000, scale);
    let mut h = histogram();
    let mut state = false;
    let mut failed = 0u64;
    let limit = Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        if Instant::now() > limit {
            break;
        }
        state = !state;
        let t0 = Instant::now();
        if panel.set(&topic, Value::Boolean(state)).await.is_err() {
            failed += 1;
            continue;
        }
        // Confirmed: the record back at `ok` with the new value (the bus sends it
        // before the answer).
        loop {
            match next_update(&mut sub).await {
                Some(u) if u.quality == Some(Quality::Ok) && u.value == Value::Boolean(state) => {
                    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    break;
                }
                Some(_) => {}
                None => {
                    failed += 1;
                    break;
                }
            }
        }
    }
    responder.abort();
    panel.close().await;
    adapter.close().await;
    let mut f = quantiles(&h);
    f.push(("failed", failed as f64));
    Ok(Row::new("command", "avbus", f))
}
