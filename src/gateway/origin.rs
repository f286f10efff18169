//! Which web pages may open the bus's WebSocket.
//!
//! A browser sends the origin of the page whose script opens a WebSocket in the
//! `Origin` header of the upgrade, and lets any page open one to any address. Without
//! a check, every web page a venue's staff visit could drive the venue's devices
//! through a bus on their network or their own machine. The gateway therefore accepts
//! an upgrade only from:
//!
//! * **no `Origin` at all**: not a browser (a script, another language's client);
//!   browsers always send one on a WebSocket upgrade;
//! * **the bus's own page**: `Origin` is `http://` or `https://` followed by the
//!   request's `Host`, and that host is an IP address or `localhost`. A host *name*
//!   is not trusted on its own: a hostile page can point its own name at the bus's
//!   address (DNS rebinding) and would then look same-origin. Serve the panel under
//!   a name by listing that name's origin;
//! * **an origin in `listen.allowed_origins`** (exact match, case-insensitive).
//!
//! Everything else, including `Origin: null` (sandboxed frames, `file:` pages), is
//! refused with 403 and counted.

use std::net::IpAddr;

/// The origins allowed besides the bus's own page.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// A policy allowing the bus's own page and `allowed` (entries already checked
    /// with [`check_origin_entry`]).
    pub fn new(allowed: &[String]) -> OriginPolicy {
        OriginPolicy {
            allowed: allowed.iter().map(|o| normalize(o)).collect(),
        }
    }

    /// Whether an upgrade with these `Origin` and `Host` headers may proceed.
    ///
    /// # Errors
    /// Why it is refused, for the log and the 403 body.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        let origin = normalize(origin);
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        if let Some(host) = host {
            let host = host.trim().to_ascii_lowercase();
            let same = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|rest| rest == host);
            if same && literal_host(&host) {
                return Ok(());
            }
            if same {
                return Err(format!(
                    "origin {origin} is this bus under a host name; add it to listen.allowed_origins"
                ));
            }
        }
        Err(format!("origin {origin} is not allowed"))
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether `host` (`name[:port]` or `[v6][:port]`) names an IP address or localhost.
fn literal_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => v6,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok()
}

/// Checks one `listen.allowed_origins` entry: `http://` or `https://`, a host, an
/// optional port, nothing else (an origin has no path).
///
/// # Errors
/// What is wrong with the entry.
pub fn check_origin_entry(entry: &str) -> Result<(), String> {
    let rest = entry
        .strip_prefix("http://")
        .or_else(|| entry.strip_prefix("https://"))
        .ok_or_else(|| format!("{entry:?} must start with http:// or https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || b.is_ascii_whitespace())
    {
        return Err(format!(
            "{entry:?} is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OriginPolicy {
        OriginPolicy::new(&["https://Panels.Example.com/".to_owned()])
    }

    #[test]
    fn own_page_by_address_is_allowed() {
        let p = policy();
        assert!(p
            .check(Some("http://127.0.0.1:7480"), Some("127.0.0.1:7480"))
            .is_ok());
        assert!(p
            .check(Some("http://localhost:7480"), Some("localhost:7480"))
            .is_ok());
        assert!(p
            .check(Some("http://[::1]:7480"), Some("[::1]:7480"))
            .is_ok());
        assert!(p.check(Some("https://10.1.2.3"), Some("10.1.2.3")).is_ok());
    }

    #[test]
    fn other_pages_are_refused() {
        let p = policy();
        // Another port on the same machine is another origin.
        assert!(p
            .check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:7480"))
            .is_err());
        assert!(p
            .check(Some("https://evil.example"), Some("127.0.0.1:7480"))
            .is_err());
        assert!(p.check(Some("null"), Some("127.0.0.1:7480")).is_err());
        // No Host header: nothing to be same-origin with.
        assert!(p.check(Some("http://127.0.0.1:7480"), None).is_err());
    }

    #[test]
    fn host_names_need_the_allow_list() {
        let p = policy();
        // DNS rebinding: the attacker's name resolves to the bus; Origin and Host agree.
        let e = p
            .check(Some("http://evil.example:7480"), Some("evil.example:7480"))
            .unwrap_err();
        assert!(e.contains("allowed_origins"), "{e}");
        assert!(p
            .check(
                Some("https://panels.example.com"),
                Some("bus.internal:7480")
            )
            .is_ok());
        assert!(p
            .check(Some("HTTPS://PANELS.EXAMPLE.COM"), Some("anything"))
            .is_ok());
    }

    #[test]
    fn non_browsers_send_no_origin() {
        assert!(policy().check(None, Some("127.0.0.1:7480")).is_ok());
        assert!(policy().check(None, None).is_ok());
    }

    #[test]
    fn allow_list_entries_are_origins() {
        assert!(check_origin_entry("https://panels.example.com").is_ok());
        assert!(check_origin_entry("http://10.0.0.5:8080/").is_ok());
        assert!(check_origin_entry("panels.example.com").is_err());
        assert!(check_origin_entry("https://panels.example.com/app").is_err());
        assert!(check_origin_entry("https://").is_err());
        assert!(check_origin_entry("ftp://x").is_err());
    }

    #[test]
    fn literal_hosts() {
        assert!(literal_host("127.0.0.1"));
        assert!(literal_host("127.0.0.1:1"));
        assert!(literal_host("[fe80::1]:7480"));
        assert!(literal_host("localhost"));
        assert!(!literal_host("bus.local:7480"));
        assert!(!literal_host("[::1"));
        assert!(!literal_host("127.0.0.1:x"));
    }
}
