//! The documentation stays true: every code excerpt in `docs/adapters.md` that names
//! its source file (a first line `// path/to/file.rs`) is still in that file, and every
//! TOML block there is a configuration avbus accepts.
//!
//! An excerpt is compared line by line with leading and trailing whitespace ignored
//! (excerpts are de-indented) and blank lines skipped; a line `// …` separates parts
//! that must appear in the file in that order, each as consecutive lines.

use std::path::Path;

const DOC: &str = "docs/adapters.md";

/// The fenced blocks of `text` with the given language, in order.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line.trim() == format!("```{lang}") => current = Some(Vec::new()),
            None => {}
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some(block) => block.push(line),
        }
    }
    assert!(current.is_none(), "{DOC}: a ```{lang} block is not closed");
    out
}

/// Non-blank lines, trimmed.
fn significant<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    lines
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Where `part` starts as consecutive lines of `file`, at or after `from`.
fn find(file: &[&str], part: &[&str], from: usize) -> Option<usize> {
    (from..=file.len().checked_sub(part.len())?).find(|&i| file[i..i + part.len()] == *part)
}

#[test]
fn adapter_doc_excerpts_are_in_their_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).expect("the doc");
    let mut checked = 0;
    for block in blocks(&doc, "rust") {
        let Some(source) = block
            .first()
            .and_then(|l| l.trim().strip_prefix("// "))
            .filter(|s| s.ends_with(".rs") && !s.contains(' '))
        else {
            continue;
        };
        let text = std::fs::read_to_string(root.join(source))
            .unwrap_or_else(|e| panic!("{DOC} quotes {source}: {e}"));
        let file = significant(text.lines());
        let lines = significant(block[1..].iter().copied());
        let mut from = 0;
        for part in lines.split(|l| *l == "// …") {
            match find(&file, part, from) {
                Some(at) => from = at + part.len(),
                None => panic!(
                    "{DOC}: this excerpt is no longer in {source} (in this order):\n{}",
                    part.join("\n")
                ),
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "{DOC}: only {checked} excerpts name their file"
    );
}

#[test]
fn adapter_doc_config_examples_are_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).expect("the doc");
    let tomls = blocks(&doc, "toml");
    assert!(!tomls.is_empty(), "{DOC}: no TOML example");
    for block in tomls {
        let text = block.join("\n");
        if let Err(e) = avbus::config::Config::parse(&text, DOC) {
            panic!("{DOC}: this example is refused: {e}\n{text}");
        }
    }
}
