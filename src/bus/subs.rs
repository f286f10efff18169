//! The subscription tree: which sessions want a topic, found without scanning every
//! filter.
//!
//! Filters are stored in a trie keyed by level. Matching a topic walks at most three
//! branches per level (the literal level, `+`, and `#`), so the cost grows with the
//! topic's depth and the wildcards actually present, not with the number of
//! subscriptions — a site has thousands of devices and hundreds of panels.

use std::collections::HashMap;

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

/// The subscription tree.
#[derive(Default)]
pub struct SubTree {
    root: Node,
    filters: usize,
}

impl SubTree {
    /// Adds `session` under `filter` (idempotent).
    pub fn insert(&mut self, filter: &Filter, session: SessionId) {
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
        let levels: Vec<&str> = filter.levels().collect();
        if remove_at(&mut self.root, &levels, session) {
            self.filters -= 1;
        }
    }

    /// Number of (filter, session) entries.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Appends every session with a filter matching `topic` to `out`, sorted and
    /// without duplicates (a session matching through two filters gets one copy).
    pub fn matches(&self, topic: &str, out: &mut Vec<SessionId>) {
        out.clear();
        let reserved = topic.starts_with('$');
        let mut levels = crate::topic::levels(topic);
        walk(&self.root, &mut levels, reserved, out);
        out.sort_unstable();
        out.dedup();
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
        t.matches("a/b/c", &mut out);
        assert_eq!(out, vec![SessionId(1), SessionId(2)]);
        t.matches("$sys/x", &mut out);
        assert_eq!(out, vec![SessionId(3)]);
        t.remove(&f("a/#"), SessionId(1));
        t.remove(&f("a/+/c"), SessionId(1));
        t.matches("a/b/c", &mut out);
        assert_eq!(out, vec![SessionId(2)]);
        assert_eq!(t.filter_count(), 2);
        t.remove(&f("#"), SessionId(2));
        t.remove(&f("$sys/#"), SessionId(3));
        assert!(t.root.is_empty());
    }
}
