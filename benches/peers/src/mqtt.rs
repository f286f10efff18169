//! Mosquitto through rumqttc, as a benchmark transport (MQTT 3.1.1, QoS 0).

use std::sync::Mutex;
use std::time::Duration;

use avbus::bench::{Conn, Feed, Transport, BENCH_QUEUE};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, Notify};

pub struct MqttTransport {
    pub port: u16,
}

struct MqttConn {
    client: AsyncClient,
    rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    suback: std::sync::Arc<Notify>,
    puback: std::sync::Arc<Notify>,
}

impl Transport for MqttTransport {
    fn system(&self) -> &str {
        "mosquitto"
    }

    fn connect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Conn>, String>> {
        Box::pin(async move {
            let mut o = MqttOptions::new(
                format!("{name}-{}", std::process::id()),
                "127.0.0.1",
                self.port,
            );
            o.set_keep_alive(Duration::from_secs(30));
            o.set_max_packet_size(1 << 20, 1 << 20);
            o.set_clean_session(true);
            let (client, mut eventloop) = AsyncClient::new(o, 65_536);
            let (tx, rx) = mpsc::channel(BENCH_QUEUE);
            let suback = std::sync::Arc::new(Notify::new());
            let puback = std::sync::Arc::new(Notify::new());
            let connected = std::sync::Arc::new(Notify::new());
            let (s, p, c) = (suback.clone(), puback.clone(), connected.clone());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            if tx.send(publish.payload).await.is_err() {
                                return;
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => c.notify_one(),
                        Ok(Event::Incoming(Packet::SubAck(_))) => s.notify_one(),
                        Ok(Event::Incoming(Packet::PubAck(_))) => p.notify_one(),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            tokio::time::timeout(Duration::from_secs(5), connected.notified())
                .await
                .map_err(|_| "mosquitto: no CONNACK".to_string())?;
            Ok(Box::new(MqttConn {
                client,
                rx: Mutex::new(Some(rx)),
                suback,
                puback,
            }) as Box<dyn Conn>)
        })
    }
}

impl Conn for MqttConn {
    fn subscribe<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Feed, String>> {
        Box::pin(async move {
            let rx = self
                .rx
                .lock()
                .map_err(|_| "poisoned".to_string())?
                .take()
                .ok_or("one subscription per benchmark connection")?;
            self.client
                .subscribe(filter, QoS::AtMostOnce)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(5), self.suback.notified())
                .await
                .map_err(|_| "mosquitto: no SUBACK".to_string())?;
            // rumqttc delivers every packet through its event loop, which the task
            // polling it demultiplexes onto this channel: the feed reads it directly.
            let mut rx = rx;
            Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
        })
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        retain: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.client
                .publish_bytes(topic, QoS::AtMostOnce, retain, payload)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), String>> {
        // A QoS 1 publish on the same connection: its PUBACK comes after everything
        // published before it was taken by the broker.
        Box::pin(async move {
            self.client
                .publish("bench/flush", QoS::AtLeastOnce, false, Vec::new())
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(30), self.puback.notified())
                .await
                .map_err(|_| "mosquitto: no PUBACK".to_string())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.client.disconnect().await;
        })
    }
}
