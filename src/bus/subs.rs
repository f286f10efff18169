//! The subscription tree: which sessions want a topic, found without scanning every
//! filter.
//!
//! Filters are stored in a trie keyed by level. Matching a topic walks at most three
//! branches per level (the literal level, `+`, and `#`), so the cost grows with the
//! topic's depth and the wildcards actually present, not with the number of
//! subscriptions — a site has thousands of devices and hundreds of panels.
//!
//! In front of the trie sits a small cache of recent answers, as in nats-server's
//! sublist: a device publishing the same control again and again is matched by one
//! lookup instead of a walk. It is direct-mapped ([`CACHE_SLOTS`] slots; a topic
//! takes the slot its hash picks, replacing what was there), so its size is fixed;
//! answers longer than [`CACHE_MAX_SESSIONS`] are not kept (their fan-out costs far
//! more than the walk). Any change to the subscriptions makes every entry stale.
//! The hash is a fast, unkeyed one: topics made to collide only cost their
//! publisher the walk it would have paid without the cache.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::SessionId;
use crate::topic::Filter;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Sessions whose filter ends with `#` below this node.
    hash: Vec<SessionId>,
    /// Sessions whose filter ends exactly here.
    exact: Vec<SessionId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

/// Slots in the match cache (a power of two).
pub const CACHE_SLOTS: usize = 1024;

/// The longest answer the match cache keeps.
pub const CACHE_MAX_SESSIONS: usize = 32;

/// A cached answer: valid while the tree is at `generation`.
struct Cached {
    topic: Arc<str>,
    generation: u64,
    sessions: Vec<SessionId>,
}

/// The subscription tree.
#[derive(Default)]
pub struct SubTree {
    root: Node,
    filters: usize,
    /// Bumped by every change to the filters.
    generation: u64,
    /// [`CACHE_SLOTS`] slots, allocated at the first match.
    cache: Vec<Option<Cached>>,
}

/// The cache slot of `topic`: FxHash's multiply-rotate over 8-byte words.
fn slot_of(topic: &str) -> usize {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h = topic.len() as u64;
    for chunk in topic.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    (h >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
}

impl SubTree {
    /// Adds `session` under `filter` (idempotent).
    pub fn insert(&mut self, filter: &Filter, session: SessionId) {
        self.generation += 1;
        let mut node = &mut self.root;
        for level in filter.levels() {
            match level {
                "#" => {
                    if !node.hash.contains(&session) {
                        node.hash.push(session);
                        self.filters += 1;
                    }
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                l => node = node.children.entry(l.into()).or_default(),
            }
        }
        if !node.exact.contains(&session) {
            node.exact.push(session);
            self.filters += 1;
        }
    }

    /// Removes `session` from `filter`, pruning empty branches.
    pub fn remove(&mut self, filter: &Filter, session: SessionId) {
        self.generation += 1;
        let levels: Vec<&str> = filter.levels().collect();
        if remove_at(&mut self.root, &levels, session) {
            self.filters -= 1;
        }
    }

    /// Number of (filter, session) entries.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Puts every session with a filter matching `topic` in `out`, sorted and
    /// without duplicates (a session matching through two filters gets one copy).
    pub fn matches(&mut self, topic: &Arc<str>, out: &mut Vec<SessionId>) {
        out.clear();
        if self.cache.is_empty() {
            self.cache = (0..CACHE_SLOTS).map(|_| None).collect();
        }
        let slot = &mut self.cache[slot_of(topic)];
        if let Some(c) = slot {
            if c.generation == self.generation
                && (Arc::ptr_eq(&c.topic, topic) || *c.topic == **topic)
            {
                out.extend_from_slice(&c.sessions);
                return;
            }
        }
        let reserved = topic.starts_with('$');
        let mut levels = crate::topic::levels(topic);
        walk(&self.root, &mut levels, reserved, out);
        out.sort_unstable();
        out.dedup();
        if out.len() <= CACHE_MAX_SESSIONS {
            let generation = self.generation;
            match slot {
                Some(c) => {
                    c.topic = topic.clone();
                    c.generation = generation;
                    c.sessions.clear();
                    c.sessions.extend_from_slice(out);
                }
                None => {
                    *slot = Some(Cached {
                        topic: topic.clone(),
                        generation,
                        sessions: out.clone(),
                    })
                }
            }
        }
    }
}

fn walk<'a>(
    node: &Node,
    levels: &mut (impl Iterator<Item = &'a str> + Clone),
    first_reserved: bool,
    out: &mut Vec<SessionId>,
) {
    // `first_reserved`: we are at the root and the topic begins with `$`, so wildcard
    // branches at this level do not apply.
    if !first_reserved {
        out.extend_from_slice(&node.hash);
    }
    let Some(level) = levels.next() else {
        out.extend_from_slice(&node.exact);
        return;
    };
    if let Some(child) = node.children.get(level) {
        walk(child, &mut levels.clone(), false, out);
    }
    if !first_reserved {
        if let Some(plus) = &node.plus {
            walk(plus, &mut levels.clone(), false, out);
        }
    }
}

fn remove_at(node: &mut Node, levels: &[&str], session: SessionId) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return take(&mut node.exact, session);
    };
    match *first {
        "#" => take(&mut node.hash, session),
        "+" => {
            let Some(plus) = node.plus.as_mut() else {
                return false;
            };
            let removed = remove_at(plus, rest, session);
            if plus.is_empty() {
                node.plus = None;
            }
            removed
        }
        l => {
            let Some(child) = node.children.get_mut(l) else {
                return false;
            };
            let removed = remove_at(child, rest, session);
            if child.is_empty() {
                node.children.remove(l);
            }
            removed
        }
    }
}

fn take(v: &mut Vec<SessionId>, session: SessionId) -> bool {
    match v.iter().position(|s| *s == session) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> Filter {
        Filter::new(s).unwrap()
    }

    #[test]
    fn walks_wildcards_and_dedups() {
        let mut t = SubTree::default();
        t.insert(&f("a/+/c"), SessionId(1));
        t.insert(&f("a/#"), SessionId(1));
        t.insert(&f("#"), SessionId(2));
        t.insert(&f("$sys/#"), SessionId(3));
        let mut out = Vec::new();
        let abc: Arc<str> = "a/b/c".into();
        t.matches(&abc, &mut out);
        assert_eq!(out, vec![SessionId(1), SessionId(2)]);
        t.matches(&"$sys/x".into(), &mut out);
        assert_eq!(out, vec![SessionId(3)]);
        t.remove(&f("a/#"), SessionId(1));
        t.remove(&f("a/+/c"), SessionId(1));
        t.matches(&abc, &mut out);
        assert_eq!(out, vec![SessionId(2)]);
        assert_eq!(t.filter_count(), 2);
        t.remove(&f("#"), SessionId(2));
        t.remove(&f("$sys/#"), SessionId(3));
        assert!(t.root.is_empty());
    }

    /// Every filter matching `topic`, by scanning them all: what the tree must answer.
    fn scan(filters: &[(String, u64)], topic: &str) -> Vec<SessionId> {
        let mut out: Vec<SessionId> = filters
            .iter()
            .filter(|(flt, _)| f(flt).matches(topic))
            .map(|(_, s)| SessionId(*s))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Sub(String, u64),
        Unsub(usize),
        Publish(String),
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("$x")].prop_map(String::from)
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![level(), Just("+".to_string()), Just("#".to_string())],
            1..4,
        )
        .prop_map(|l| {
            // `#` only last.
            let end = l.iter().position(|x| x == "#").map_or(l.len(), |i| i + 1);
            l[..end].join("/")
        })
        .prop_filter("a valid filter", |s| Filter::new(s).is_ok())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (filter(), 1u64..6).prop_map(|(flt, s)| Op::Sub(flt, s)),
            (0usize..64).prop_map(Op::Unsub),
            topic().prop_map(Op::Publish),
            topic().prop_map(Op::Publish),
        ]
    }

    proptest! {
        /// With its cache, the tree answers as a scan of every filter, through any
        /// mix of subscribing, unsubscribing and publishing (the same topic again, in
        /// a fresh string or the same one).
        #[test]
        fn cached_matches_are_what_a_scan_finds(ops in proptest::collection::vec(op(), 1..120)) {
            let mut t = SubTree::default();
            let mut filters: Vec<(String, u64)> = Vec::new();
            let mut seen: HashMap<String, Arc<str>> = HashMap::new();
            let mut out = Vec::new();
            for op in ops {
                match op {
                    Op::Sub(flt, s) => {
                        t.insert(&f(&flt), SessionId(s));
                        if !filters.contains(&(flt.clone(), s)) {
                            filters.push((flt, s));
                        }
                    }
                    Op::Unsub(i) if !filters.is_empty() => {
                        let (flt, s) = filters.swap_remove(i % filters.len());
                        t.remove(&f(&flt), SessionId(s));
                    }
                    Op::Unsub(_) => {}
                    Op::Publish(topic) => {
                        let shared = seen.entry(topic.clone()).or_insert_with(|| topic.as_str().into());
                        t.matches(shared, &mut out);
                        prop_assert_eq!(&out, &scan(&filters, &topic));
                        t.matches(&topic.as_str().into(), &mut out);
                        prop_assert_eq!(&out, &scan(&filters, &topic));
                    }
                }
            }
        }
    }

    #[test]
    fn the_cache_slot_is_in_range_and_spreads() {
        let mut used = std::collections::HashSet::new();
        for i in 0..4096 {
            let slot = slot_of(&format!("room{}/dev{}/level", i % 64, i / 64));
            assert!(slot < CACHE_SLOTS);
            used.insert(slot);
        }
        assert!(used.len() > CACHE_SLOTS / 2, "{} slots used", used.len());
    }
}
