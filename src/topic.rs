//! Topic names and subscription filters: validation and matching.
//!
//! A topic is a `/`-separated hierarchy such as `boardroom/projector/power`. The rules
//! (documented in `docs/protocol.md`) are deliberately strict so that every client in
//! every language agrees on what a name is:
//!
//! * 1 to [`MAX_TOPIC_LEN`] bytes, 1 to [`MAX_DEPTH`] levels, no empty level;
//! * each level is 1 to [`MAX_LEVEL_LEN`] characters from `A-Z a-z 0-9 - _ . : @`;
//! * the first level may begin with `$`: those names belong to the bus (`$sys/...`,
//!   `$devices/...`, `$clients/...`) and clients cannot publish to them.
//!
//! A filter follows the same rules, except that a whole level may be `+` (exactly one
//! level) and the last level may be `#` (this level and everything below, including
//! none: `a/#` matches `a`). As in MQTT, a filter whose first level is a wildcard does
//! not match names that begin with `$`.

use std::fmt;
use std::sync::Arc;

/// Longest topic or filter, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most levels in a topic or filter.
pub const MAX_DEPTH: usize = 8;
/// Longest single level, in bytes.
pub const MAX_LEVEL_LEN: usize = 64;

/// Why a topic or filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty name")]
    Empty,
    #[error("longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("more than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("empty level at position {0}")]
    EmptyLevel(usize),
    #[error("level {0} is longer than {MAX_LEVEL_LEN} bytes")]
    LevelTooLong(usize),
    #[error("character {1:?} not allowed in level {0} (allowed: A-Z a-z 0-9 - _ . : @)")]
    BadChar(usize, char),
    #[error("wildcard must be a whole level (level {0})")]
    PartialWildcard(usize),
    #[error("'#' must be the last level")]
    HashNotLast,
    #[error("wildcards are not allowed in a topic name")]
    WildcardInTopic,
}

fn allowed(b: u8) -> bool {
    ALLOWED[b as usize]
}

/// [`allowed`] as a table: one load per byte of every topic published.
static ALLOWED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'@');
        b += 1;
    }
    t
};

/// Checks a topic name or filter in one pass over its bytes (every message a client
/// publishes goes through here). Only ASCII is allowed, so a level's bytes are its
/// characters; the first byte not allowed starts the character reported.
fn check(name: &str, filter: bool) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let bytes = name.as_bytes();
    let depth = bytes.iter().filter(|&&b| b == b'/').count() + 1;
    if depth > MAX_DEPTH {
        return Err(TopicError::TooDeep);
    }
    let mut start = 0;
    for (i, level) in bytes.split(|&b| b == b'/').enumerate() {
        let at = start;
        start += level.len() + 1;
        if level.is_empty() {
            return Err(TopicError::EmptyLevel(i));
        }
        if level.len() > MAX_LEVEL_LEN {
            return Err(TopicError::LevelTooLong(i));
        }
        if level == b"+" || level == b"#" {
            if !filter {
                return Err(TopicError::WildcardInTopic);
            }
            if level == b"#" && i + 1 != depth {
                return Err(TopicError::HashNotLast);
            }
            continue;
        }
        for (j, &b) in level.iter().enumerate() {
            if allowed(b) || (b == b'$' && i == 0 && j == 0) {
                continue;
            }
            if b == b'+' || b == b'#' {
                return Err(if filter {
                    TopicError::PartialWildcard(i)
                } else {
                    TopicError::WildcardInTopic
                });
            }
            // Every byte before this one was ASCII: this is a character boundary.
            let c = name[at + j..].chars().next().unwrap_or('\u{fffd}');
            return Err(TopicError::BadChar(i, c));
        }
    }
    Ok(())
}

/// A validated topic name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    ///
    /// # Errors
    /// [`TopicError`] naming the rule that `name` breaks.
    pub fn new(name: &str) -> Result<Topic, TopicError> {
        check(name, false)?;
        Ok(Topic(Arc::from(name)))
    }

    /// [`Topic::new`] keeping the string it is given (no copy).
    ///
    /// # Errors
    /// The first rule the name breaks.
    pub fn from_shared(name: Arc<str>) -> Result<Topic, TopicError> {
        check(&name, false)?;
        Ok(Topic(name))
    }

    /// [`Topic::from_shared`] with a memo of the last string that passed: `name`, if
    /// it is that very string (the same allocation, which the memo keeps alive), is
    /// not checked again; if it passes, it becomes the memo.
    ///
    /// # Errors
    /// [`TopicError`] naming the rule that `name` breaks.
    pub fn from_shared_memo(
        name: Arc<str>,
        memo: &mut Option<Arc<str>>,
    ) -> Result<Topic, TopicError> {
        if memo.as_ref().is_some_and(|m| Arc::ptr_eq(m, &name)) {
            return Ok(Topic(name));
        }
        let topic = Topic::from_shared(name)?;
        *memo = Some(topic.shared());
        Ok(topic)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for tables keyed by topic.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The levels of the name.
    pub fn levels(&self) -> Levels<'_> {
        levels(&self.0)
    }

    /// Whether this name belongs to the bus (`$sys/...`, `$devices/...`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &*self.0)
    }
}

/// A validated subscription filter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter(Arc<str>);

impl Filter {
    /// Validates `filter`.
    ///
    /// # Errors
    /// [`TopicError`] naming the rule that `filter` breaks.
    pub fn new(filter: &str) -> Result<Filter, TopicError> {
        check(filter, true)?;
        Ok(Filter(Arc::from(filter)))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The levels of the filter.
    pub fn levels(&self) -> Levels<'_> {
        levels(&self.0)
    }

    /// The literal part before the first wildcard, ending in `/` if there is a
    /// wildcard after it; used to range-scan a sorted table of topics.
    pub fn literal_prefix(&self) -> &str {
        match self.0.find(['+', '#']) {
            Some(i) => &self.0[..i],
            None => &self.0,
        }
    }

    /// Whether the filter has no wildcard (it names exactly one topic).
    pub fn is_exact(&self) -> bool {
        !self.0.contains(['+', '#'])
    }

    /// Whether `topic` matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        matches(&self.0, topic)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({})", &*self.0)
    }
}

/// The levels of a name or filter, exactly as `split('/')` yields them, found by a
/// plain byte scan: levels are a few bytes long, and this runs on every publish.
#[derive(Clone, Debug)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// The levels of `s` (see [`Levels`]).
pub fn levels(s: &str) -> Levels<'_> {
    Levels { rest: Some(s) }
}

/// Matches a topic name against a filter (both assumed valid).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = levels(filter);
    let mut t = levels(topic);
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic matches both filters (both assumed valid). Used to refuse a
/// subscription that could never deliver anything the client may read.
pub fn intersects(a: &str, b: &str) -> bool {
    // A filter starting with a wildcard matches no `$` name, so it shares nothing with
    // a filter whose first level is a literal `$` name.
    let wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (wild(a) && b.starts_with('$')) || (wild(b) && a.starts_with('$')) {
        return false;
    }
    let mut x = levels(a);
    let mut y = levels(b);
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(l), Some(r)) if l == "+" || r == "+" || l == r => {}
            _ => return false,
        }
    }
}

/// Whether every topic matching `inner` also matches `outer` (both assumed valid).
/// A subscription covered by a read rule needs no per-topic check on delivery.
pub fn covers(outer: &str, inner: &str) -> bool {
    let wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if wild(outer) && inner.starts_with('$') {
        return false;
    }
    let mut o = levels(outer);
    let mut i = levels(inner);
    let mut depth = 0;
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) | (None, None) => return true,
            // `inner` matches any number of further levels here: at least one at the
            // top (names have a level), none below (`a/#` matches `a`). `outer` must
            // take them all: some `+` (as many as are sure to exist), then `#`.
            (Some(ol), Some("#")) => {
                let pluses = std::iter::once(ol).chain(o.by_ref());
                let mut sure = usize::from(depth == 0);
                for l in pluses {
                    match l {
                        "#" => return true,
                        "+" if sure > 0 => sure -= 1,
                        _ => return false,
                    }
                }
                return false;
            }
            (Some(ol), Some(il)) if ol == "+" || ol == il => {}
            _ => return false,
        }
        depth += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert!(Topic::new("boardroom/projector/power").is_ok());
        assert!(Topic::new("$sys/connections").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a//b"), Err(TopicError::EmptyLevel(1)));
        assert_eq!(Topic::new("a/b/"), Err(TopicError::EmptyLevel(2)));
        assert_eq!(Topic::new("a/+"), Err(TopicError::WildcardInTopic));
        assert_eq!(Topic::new("a/b c"), Err(TopicError::BadChar(1, ' ')));
        assert_eq!(Topic::new("a/$b"), Err(TopicError::BadChar(1, '$')));
        assert_eq!(Topic::new("a/b/c/d/e/f/g/h/i"), Err(TopicError::TooDeep));
        assert_eq!(
            Topic::new(&"a".repeat(65)),
            Err(TopicError::LevelTooLong(0))
        );
    }

    #[test]
    fn a_memo_skips_only_the_string_that_passed() {
        let mut memo = None;
        let good: Arc<str> = "room/dsp/level".into();
        let bad: Arc<str> = "room//level".into();
        assert!(Topic::from_shared_memo(good.clone(), &mut memo).is_ok());
        assert!(memo.as_ref().is_some_and(|m| Arc::ptr_eq(m, &good)));
        // A failing string is refused and never memoized.
        for _ in 0..2 {
            assert_eq!(
                Topic::from_shared_memo(bad.clone(), &mut memo),
                Err(TopicError::EmptyLevel(1))
            );
            assert!(memo.as_ref().is_some_and(|m| Arc::ptr_eq(m, &good)));
        }
        assert_eq!(
            Topic::from_shared_memo(good.clone(), &mut memo).map(|t| t.shared()),
            Ok(good.clone())
        );
        // Equal text in another allocation is checked (and memoized) afresh.
        let again: Arc<str> = "room/dsp/level".into();
        assert!(Topic::from_shared_memo(again.clone(), &mut memo).is_ok());
        assert!(memo.as_ref().is_some_and(|m| Arc::ptr_eq(m, &again)));
    }

    #[test]
    fn filter_rules() {
        assert!(Filter::new("#").is_ok());
        assert!(Filter::new("+/projector/#").is_ok());
        assert_eq!(Filter::new("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(Filter::new("a/b+"), Err(TopicError::PartialWildcard(1)));
        assert_eq!(Filter::new("a/+/b").unwrap().literal_prefix(), "a/");
        assert_eq!(Filter::new("a/b").unwrap().literal_prefix(), "a/b");
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$sys/x"));
        assert!(!matches("+/x", "$sys/x"));
        assert!(matches("$sys/#", "$sys/x"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn intersecting_filters() {
        assert!(intersects("#", "hall/x"));
        assert!(intersects("+/+/power", "boardroom/#"));
        assert!(intersects("a", "a/#"));
        assert!(intersects("a/+", "+/b"));
        assert!(!intersects("hall/#", "boardroom/#"));
        assert!(!intersects("a/b", "a/b/c"));
        assert!(!intersects("#", "$sys/#"));
        assert!(!intersects("+/x", "$sys/x"));
        assert!(intersects("$sys/#", "$sys/x"));
        assert!(intersects("$devices/+/+", "$devices/boardroom/#"));
    }

    /// `intersects` and `covers` agree with `matches` over every small filter and
    /// topic (levels `a`, `b`, `$s` first, `+`, `#`; depth 1 to 3, topics to 4).
    #[test]
    fn intersect_and_cover_agree_with_matching() {
        fn names(alphabet: &[&str], depth: usize, first: &[&str]) -> Vec<String> {
            let mut out: Vec<Vec<String>> = first.iter().map(|l| vec![l.to_string()]).collect();
            let mut all: Vec<String> = out.iter().map(|v| v.join("/")).collect();
            for _ in 1..depth {
                out = out
                    .iter()
                    .filter(|v| v.last().map(String::as_str) != Some("#"))
                    .flat_map(|v| {
                        alphabet.iter().map(move |l| {
                            let mut w = v.clone();
                            w.push(l.to_string());
                            w
                        })
                    })
                    .collect();
                all.extend(out.iter().map(|v| v.join("/")));
            }
            all
        }
        let filters = names(&["a", "b", "+", "#"], 3, &["a", "b", "+", "#", "$s"]);
        let topics = names(&["a", "b"], 4, &["a", "b", "$s"]);
        for f in &filters {
            for g in &filters {
                let both = topics.iter().any(|t| matches(f, t) && matches(g, t));
                assert_eq!(intersects(f, g), both, "intersects({f}, {g})");
                let cover = topics.iter().all(|t| !matches(g, t) || matches(f, t));
                assert_eq!(covers(f, g), cover, "covers({f}, {g})");
            }
        }
    }

    #[test]
    fn covering_filters() {
        assert!(covers("boardroom/#", "boardroom/+/power"));
        assert!(covers("boardroom/#", "boardroom"));
        assert!(covers("+/+/power", "a/b/power"));
        assert!(covers("#", "a/#"));
        assert!(!covers("#", "$sys/#"));
        assert!(!covers("boardroom/#", "#"));
        assert!(!covers("boardroom/+", "boardroom/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a", "a/#"));
        assert!(covers("$sys/#", "$sys/x"));
    }

    /// The checker as it was written before the one-pass version: by `str::split`
    /// and `chars`, the reference the property below holds [`check`] to.
    fn check_by_chars(name: &str, filter: bool) -> Result<(), TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        let depth = name.split('/').count();
        if depth > MAX_DEPTH {
            return Err(TopicError::TooDeep);
        }
        for (i, level) in name.split('/').enumerate() {
            if level.is_empty() {
                return Err(TopicError::EmptyLevel(i));
            }
            if level.len() > MAX_LEVEL_LEN {
                return Err(TopicError::LevelTooLong(i));
            }
            if level == "+" || level == "#" {
                if !filter {
                    return Err(TopicError::WildcardInTopic);
                }
                if level == "#" && i + 1 != depth {
                    return Err(TopicError::HashNotLast);
                }
                continue;
            }
            for (j, c) in level.chars().enumerate() {
                if c == '$' && i == 0 && j == 0 {
                    continue;
                }
                if c == '+' || c == '#' {
                    return Err(if filter {
                        TopicError::PartialWildcard(i)
                    } else {
                        TopicError::WildcardInTopic
                    });
                }
                if !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')) {
                    return Err(TopicError::BadChar(i, c));
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        #[test]
        fn levels_are_what_split_yields(s in "[a/é+#]{0,12}") {
            proptest::prop_assert_eq!(
                levels(&s).collect::<Vec<_>>(),
                s.split('/').collect::<Vec<_>>()
            );
        }

        #[test]
        fn one_pass_check_agrees_with_the_reference(
            name in "([a-c$+#/é.@ \\x00-]|[a-z]{60,70}){0,12}",
            filter: bool,
        ) {
            proptest::prop_assert_eq!(check(&name, filter), check_by_chars(&name, filter));
        }
    }
}
