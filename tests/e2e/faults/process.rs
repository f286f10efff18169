//! `avbus serve` as a child process inside a namespace, for crash tests: started
//! with a config file, found by its `{"ready": ...}` line, killed with SIGKILL.
//! The child is killed and reaped on drop (also when a test fails).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::netns::Netns;

/// What the ready line said.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// The bound TCP port.
    pub port: u16,
    /// This run's epoch.
    pub epoch: u64,
    /// The process that printed it.
    pub pid: u32,
}

/// A running `avbus serve`.
pub struct BusProcess {
    child: Child,
    /// What its ready line said.
    pub ready: Ready,
}

impl BusProcess {
    /// Runs `avbus serve --config <config>` in `ns` (stderr appended to `log`) and
    /// waits, at most `limit`, for its ready line.
    pub async fn start(ns: &Netns, config: &Path, log: &Path, limit: Duration) -> BusProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the bus's log file");
        // `ip netns exec` enters the namespace and then execs the program itself, so
        // the child's pid is the bus's (checked against the ready line).
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_avbus")])
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start avbus serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A blocking read of one line, on its own thread; the rest of stdout is
        // drained there too, so the bus never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Some(Ok(line)))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!("no ready line from avbus serve ({other:?}, exit {status:?})");
            }
        };
        let ready = parse_ready(&line);
        assert_eq!(ready.pid, child.id(), "the child is the bus itself");
        BusProcess { child, ready }
    }

    /// SIGKILL: no shutdown, no flush, no goodbye to anyone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the bus");
        let status = self.child.wait().expect("reap the bus");
        assert!(!status.success(), "killed, not exited: {status:?}");
    }
}

impl Drop for BusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_ready(line: &str) -> Ready {
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the ready line is JSON ({e}): {line}"));
    let r = &v["ready"];
    let tcp: std::net::SocketAddr = r["tcp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a tcp address in {line}"));
    Ready {
        port: tcp.port(),
        epoch: r["epoch"].as_u64().expect("an epoch"),
        pid: r["pid"].as_u64().expect("a pid") as u32,
    }
}

/// A directory for one test's files, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `$TMPDIR/avbus-faults-<pid>-<name>`, fresh.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("avbus-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "faults: kept {} (the bus's log and journal)",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
