//! The soak's child processes (the bus, the device simulators), its scratch
//! directory, the bus's configuration, and what `/proc` says about the bus.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::bench::spawn_ready;

/// A child process, killed (and reaped) when dropped.
pub(super) struct Proc {
    child: Child,
    /// Its ready line (`{"ready": …}`).
    pub ready: serde_json::Value,
}

impl Proc {
    /// Starts `exe ARGS --listen 127.0.0.1:0 --log-level warn` and waits (at most a
    /// minute) for its ready line.
    ///
    /// # Errors
    /// The process cannot start or prints no ready line.
    pub async fn start(exe: &Path, args: Vec<String>) -> Result<Proc, String> {
        let exe = exe.to_owned();
        let what = args.join(" ");
        let started = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_ready(&exe, &args)
        })
        .await
        .map_err(|e| e.to_string())?;
        let (child, ready) = started.map_err(|e| format!("avbus {what}: {e}"))?;
        Ok(Proc { child, ready })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `addrs` list of a simulator's ready line.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.ready["ready"]["addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect()
    }
}

impl Proc {
    /// Kills and reaps it (again: a no-op).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory (the bus's configuration), removed when dropped.
pub(super) struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `avbus-soak-<pid>-<seed>` in the system's temporary directory.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(seed: u64) -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("avbus-soak-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The site the soak runs: switchers in rooms, consoles in the hall.
#[derive(Debug, Clone)]
pub struct Site {
    /// `(room, [device keys])`, e.g. `("room01", ["room01/sw1", …])`.
    pub rooms: Vec<(String, Vec<String>)>,
    /// Console device keys (`hall/console1`, …).
    pub consoles: Vec<String>,
}

/// Switchers per room.
pub const ROOM_SIZE: usize = 4;
/// One X32 console per this many switchers (at least one).
pub const SWITCHERS_PER_CONSOLE: usize = 20;

impl Site {
    /// `switchers` switchers, [`ROOM_SIZE`] to a room, and their consoles.
    pub fn new(switchers: usize) -> Site {
        let mut rooms: Vec<(String, Vec<String>)> = Vec::new();
        for i in 0..switchers {
            let room = format!("room{:02}", i / ROOM_SIZE + 1);
            let key = format!("{room}/sw{}", i % ROOM_SIZE + 1);
            match rooms.last_mut() {
                Some((r, keys)) if *r == room => keys.push(key),
                _ => rooms.push((room, vec![key])),
            }
        }
        let consoles = switchers.div_ceil(SWITCHERS_PER_CONSOLE).max(1);
        Site {
            rooms,
            consoles: (1..=consoles).map(|i| format!("hall/console{i}")).collect(),
        }
    }

    /// Every device key: switchers, then consoles.
    pub fn devices(&self) -> Vec<String> {
        let mut all: Vec<String> = self.rooms.iter().flat_map(|(_, d)| d.clone()).collect();
        all.extend(self.consoles.iter().cloned());
        all
    }
}

/// Replay log entries of the soak's bus (the default is 100 000): small enough that
/// the log is full, and evicting, before the first sample that counts, so that its
/// filling up (bounded, by design) is not read as a leak.
pub const REPLAY_ENTRIES: usize = 20_000;

/// The bus's configuration: a `[[device]]` entry per simulator (addresses in the
/// order of [`Site::devices`]), the replay log at [`REPLAY_ENTRIES`], every other
/// setting at its default; with `journal`, the retained-state journal in that
/// directory.
pub(super) fn bus_config(
    site: &Site,
    switchers: &[SocketAddr],
    consoles: &[SocketAddr],
    journal: Option<&Path>,
) -> String {
    let mut toml = format!("[limits]\nreplay_entries = {REPLAY_ENTRIES}\n");
    if let Some(dir) = journal {
        let dir = serde_json::Value::from(dir.display().to_string());
        let _ = write!(toml, "\n[persist]\ndir = {dir}\n");
    }
    let entries = site
        .devices()
        .into_iter()
        .zip(switchers.iter().chain(consoles).copied());
    for (key, addr) in entries {
        let (room, name) = key.split_once('/').unwrap_or((&key, ""));
        let driver = if room == "hall" {
            "x32-osc"
        } else {
            "extron-sis"
        };
        let _ = write!(
            toml,
            "\n[[device]]\nroom = \"{room}\"\nname = \"{name}\"\ndriver = \"{driver}\"\n\
             host = \"{}\"\nport = {}\n",
            addr.ip(),
            addr.port()
        );
    }
    toml
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// Size in bytes of the files under `dir` (the journal), `None` when it is absent.
pub fn dir_bytes(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        total += if meta.is_dir() {
            dir_bytes(&e.path()).unwrap_or(0)
        } else {
            meta.len()
        };
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_fills_rooms_of_four_and_has_a_console_per_twenty_switchers() {
        let s = Site::new(41);
        assert_eq!(s.rooms.len(), 11);
        assert_eq!(s.rooms[10], ("room11".into(), vec!["room11/sw1".into()]));
        assert_eq!(
            s.consoles,
            ["hall/console1", "hall/console2", "hall/console3"]
        );
        assert_eq!(Site::new(1).consoles.len(), 1);
    }

    #[test]
    fn the_bus_config_is_one_the_bus_accepts() {
        let site = Site::new(5);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let toml = bus_config(&site, &[a; 5], &[a], None);
        let cfg = crate::config::Config::parse(&toml, "soak.toml").unwrap();
        assert_eq!(cfg.devices.len(), 6);
        assert_eq!(cfg.devices[5].driver, "x32-osc");
        assert_eq!(cfg.limits.replay_entries, REPLAY_ENTRIES);
    }

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(fd_count(me).is_some_and(|n| n >= 3));
    }
}
