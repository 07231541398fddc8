//! The README's examples and those of the reference pages it links (`docs/`) run as written:
//! every ```sh block (but those tagged `long`: the demo, the 100-pair evaluation and the
//! 51-minute training, which CI or their own tests run) is executed command by command, page
//! after page in one fresh folder that sees the repository's files, and every command must
//! succeed; every ```toml block is a spec adeis loads.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The README and the reference pages with examples, in the order their commands run (a page
/// may use what an earlier one wrote).
const PAGES: [&str; 9] = [
    "README.md",
    "docs/main-job.md",
    "docs/learned-steps.md",
    "docs/commands.md",
    "docs/diffusers.md",
    "docs/rust.md",
    "docs/spec-files.md",
    "docs/numerics.md",
    "docs/benchmarks.md",
];

/// Every page's text, read.
fn pages() -> Vec<(&'static str, String)> {
    PAGES
        .iter()
        .map(|p| (*p, std::fs::read_to_string(root().join(p)).unwrap()))
        .collect()
}

/// (info string, body) of every fenced block.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None => current = Some((info.trim().to_string(), String::new())),
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The commands of a shell block: continuation lines joined, comments dropped, `NAME=value`
/// lines kept as variables and `$NAME` substituted.
fn commands(body: &str) -> Vec<Vec<String>> {
    let mut joined = Vec::new();
    let mut acc = String::new();
    for line in body.lines() {
        let code = match line.find(" #") {
            Some(k) => &line[..k],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
        } else {
            acc.push_str(code);
            if !acc.trim().is_empty() {
                joined.push(acc.trim().to_string());
            }
            acc.clear();
        }
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for line in joined {
        if let Some((name, value)) = line.split_once('=') {
            if !name.contains(' ') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                vars.push((name.to_string(), value.to_string()));
                continue;
            }
        }
        let mut line = line;
        for (name, value) in &vars {
            line = line.replace(&format!("${name}"), value);
        }
        out.push(line.split_whitespace().map(str::to_string).collect());
    }
    out
}

#[test]
fn every_readme_command_block_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    // A fresh folder that sees the repository's inputs, so outputs land in the folder.
    for entry in ["examples", "tests", "models", "data", "scripts"] {
        std::os::unix::fs::symlink(root().join(entry), dir.path().join(entry)).unwrap();
    }
    let mut ran = 0;
    let all = pages();
    let page_blocks = all
        .iter()
        .flat_map(|(page, text)| blocks(text).into_iter().map(move |b| (*page, b)));
    for (page, (info, body)) in page_blocks {
        let words: Vec<&str> = info.split_whitespace().collect();
        if words.first() != Some(&"sh") || words.contains(&"long") {
            continue;
        }
        for cmd in commands(&body) {
            let rest = match cmd
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["cargo", "run", "--release", "--", ..] => cmd[4..].to_vec(),
                _ => panic!("a {page} sh block runs something other than `cargo run --release -- ...`: {cmd:?}; tag the block `long` or make it a command"),
            };
            let out = Command::new(env!("CARGO_BIN_EXE_adeis"))
                .args(&rest)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{page}: `adeis {}` failed:\n{}",
                rest.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 15, "only {ran} README commands found");
    // What the commands promise to write is there.
    for f in [
        "x0.npy",
        "g/dtimes.npy",
        "g/dschedule.json",
        "grads/dx_t.npy",
        "adeis-out/learn-steps/learned.toml",
    ] {
        assert!(
            dir.path().join(f).exists(),
            "README commands did not write {f}"
        );
    }
}

#[test]
fn every_readme_spec_block_loads() {
    let specs: Vec<String> = pages()
        .iter()
        .flat_map(|(_, text)| blocks(text))
        .filter(|(info, _)| info == "toml")
        .map(|(_, body)| body)
        .collect();
    assert!(!specs.is_empty());
    for body in specs {
        let spec = adeis::spec_file::parse_spec(&body, adeis::spec_file::SpecFormat::Toml)
            .unwrap_or_else(|e| panic!("README spec block does not parse: {e}\n{body}"));
        adeis::compiler::Problem::from_spec(&spec)
            .unwrap_or_else(|e| panic!("README spec block does not build: {e}\n{body}"));
    }
}
