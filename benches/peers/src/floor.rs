//! The loopback floor: a TCP echo (two crossings per round trip) and a relay that
//! forwards bytes between two clients without parsing them (four crossings, like a
//! ping-pong through a broker). No broker can beat the relay.

use std::time::{Duration, Instant};

use avbus::bench::{histogram, quantiles, scaled, stamp, Row, PAYLOAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the echo: every byte read is written back.
pub async fn serve_echo(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Serves the relay: connections are paired in accept order, and each forwards to
/// the other.
pub async fn serve_relay(listener: TcpListener) {
    loop {
        let Ok((mut a, _)) = listener.accept().await else {
            return;
        };
        let Ok((mut b, _)) = listener.accept().await else {
            return;
        };
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// `rtt` through the echo (`relay: false`) or the relay: the same 64-byte payload,
/// warm-up and count as the broker rows.
pub async fn rtt(addr: &str, relay: bool, scale: f64) -> Result<Row, String> {
    let mut a = connect(addr).await?;
    if relay {
        let mut b = connect(addr).await?;
        // The far end of the relay echoes, as the broker workload's second client does.
        tokio::spawn(async move {
            let mut buf = [0u8; PAYLOAD];
            while b.read_exact(&mut buf).await.is_ok() {
                if b.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
    let n = scaled(20_000, scale);
    let warmup = scaled(1_000, scale);
    let mut h = histogram();
    let mut buf = [0u8; PAYLOAD];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            break;
        }
        let t0 = Instant::now();
        a.write_all(&stamp()).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut buf))
            .await
            .map_err(|_| "floor: no echo".to_string())?
            .map_err(|e| e.to_string())?;
        if i >= warmup {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
        }
    }
    let system = if relay { "floor-relay" } else { "floor-echo" };
    Ok(Row::new("rtt", system, quantiles(&h)))
}
