//! What the docs tell a newcomer matches the code they will open.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The names the code map of `docs/design.md` gives in its table, in backticks, that look like
/// module names.
fn code_map_names() -> BTreeSet<String> {
    let design = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/design.md"))
        .expect("docs/design.md");
    let start = design.find("## Code map").expect("a Code map section");
    let rest = &design[start + 3..];
    let map = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    // The table's rows only: the prose around it may quote anything.
    let rows: String = map
        .lines()
        .filter(|line| line.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    rows.split('`')
        .skip(1)
        .step_by(2)
        .map(|token| token.trim_end_matches('/'))
        .filter(|token| {
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_string)
        .collect()
}

/// Every source file's module name (`mod` for a folder's `mod.rs`) and every folder under src/.
fn source_names() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = BTreeSet::new();
    for entry in walkdir::WalkDir::new(&src).min_depth(1) {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().is_dir() {
            names.insert(path.file_name().unwrap().to_string_lossy().into_owned());
        } else if path.extension().is_some_and(|e| e == "rs") {
            names.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names
}

#[test]
fn the_code_map_names_every_source_file() {
    let named = code_map_names();
    let files = source_names();
    let unmapped: Vec<&String> = files.difference(&named).collect();
    assert!(
        unmapped.is_empty(),
        "docs/design.md's code map does not name {unmapped:?}: say in a few words what each holds"
    );
    let stale: Vec<&String> = named.difference(&files).collect();
    assert!(
        stale.is_empty(),
        "docs/design.md's code map names {stale:?}, which src/ no longer has"
    );
}

#[test]
fn every_git_sync_flag_has_its_row_in_the_migration_guide() {
    let help = crate::support::dagsnap(Path::new("/"))
        .args(["git-sync", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let guide = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/migrating.md"))
        .expect("docs/migrating.md");
    let flags: BTreeSet<&str> = help
        .lines()
        // A flag's own line starts with it (`    -v, --verbose ($GITSYNC_VERBOSE)`).
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(flags.len() > 50, "read the flags from:\n{help}");
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|flag| {
            ![
                format!("`{flag}`"),
                format!("`{flag} "),
                format!("`{flag}="),
            ]
            .iter()
            .any(|quoted| guide.contains(quoted.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/migrating.md has no row for {missing:?}: say what dagsnap does with each"
    );
}
