//! Several repositories published as one snapshot: `--source NAME=URL` and its companions
//! (`--source-ref NAME=REF`, ...), or the same as a file (`--sources-file`, TOML or YAML, the
//! natural form of a ConfigMap). Each source's tree lands under `NAME/` of every snapshot.
//!
//! Read here into plain [`SourceSpec`]s; `plan` turns them into remotes, one per source, each
//! with its own credentials.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// The longest source name: it is a directory name in every snapshot.
const MAX_NAME: usize = 64;

#[derive(Debug, Args, Default)]
pub struct SourceArgs {
    /// A repository published under NAME/ of every snapshot, beside the other sources (repeat
    /// for each, or separate them with commas: `dags=https://...`, `plugins=git@host:plugins.git`). A change in any source
    /// builds one snapshot of all of them and the link moves once. Instead of --repo.
    #[arg(
        long = "source",
        env = "DAGSNAP_SOURCE",
        value_delimiter = ',',
        value_name = "NAME=URL"
    )]
    pub sources: Vec<String>,

    /// The branch, tag or commit a source follows (default: the remote's HEAD).
    #[arg(
        long = "source-ref",
        env = "DAGSNAP_SOURCE_REF",
        value_delimiter = ',',
        value_name = "NAME=REF"
    )]
    pub source_refs: Vec<String>,

    /// Publish only this directory of a source's commits under NAME/.
    #[arg(
        long = "source-subdir",
        env = "DAGSNAP_SOURCE_SUBDIR",
        value_delimiter = ',',
        value_name = "NAME=PATH"
    )]
    pub source_subdirs: Vec<String>,

    /// Commits of a source's history to fetch (default: --depth).
    #[arg(
        long = "source-depth",
        env = "DAGSNAP_SOURCE_DEPTH",
        value_delimiter = ',',
        value_name = "NAME=N"
    )]
    pub source_depths: Vec<String>,

    /// The HTTPS user name for one source's server.
    #[arg(
        long = "source-username",
        env = "DAGSNAP_SOURCE_USERNAME",
        value_delimiter = ',',
        value_name = "NAME=USER"
    )]
    pub source_usernames: Vec<String>,

    /// A file holding one source's HTTPS password or token, sent to that source's server only.
    #[arg(
        long = "source-password-file",
        env = "DAGSNAP_SOURCE_PASSWORD_FILE",
        value_delimiter = ',',
        value_name = "NAME=FILE"
    )]
    pub source_password_files: Vec<String>,

    /// An SSH private key offered to one source's server only.
    #[arg(
        long = "source-ssh-key-file",
        env = "DAGSNAP_SOURCE_SSH_KEY_FILE",
        value_delimiter = ',',
        value_name = "NAME=FILE"
    )]
    pub source_ssh_key_files: Vec<String>,

    /// The sources as a file (TOML or YAML): a list `sources` of tables with `name`, `url` and
    /// optionally `ref`, `subdir`, `depth`, `username`, `password_file`, `ssh_key_file`,
    /// `allow_stale`. Instead of --source.
    #[arg(long, env = "DAGSNAP_SOURCES_FILE", value_name = "FILE")]
    pub sources_file: Option<PathBuf>,

    /// When this source cannot be fetched, publish the others' new commits with its commit of
    /// the live snapshot (the manifest says it is stale). Without it, a failing source holds
    /// every source back: nothing is published that mixes in its stale commit.
    #[arg(
        long = "allow-stale-source",
        value_name = "NAME",
        env = "DAGSNAP_ALLOW_STALE_SOURCE",
        value_delimiter = ','
    )]
    pub allow_stale: Vec<String>,
}

/// One source, as the flags or the file give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    #[serde(alias = "repo")]
    pub url: String,
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub subdir: Option<String>,
    #[serde(default)]
    pub depth: Option<u32>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_stale: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcesFile {
    sources: Vec<SourceSpec>,
}

/// How a companion flag's value sets a field of a source.
type Apply = fn(&mut SourceSpec, &str) -> Result<(), String>;

impl SourceArgs {
    /// The sources, checked: names valid and distinct, every companion flag naming a source,
    /// `--allow-stale-source` naming one too.
    pub fn specs(&self) -> Result<Vec<SourceSpec>, String> {
        let mut specs = match (&self.sources_file, self.sources.is_empty()) {
            (Some(_), false) => {
                return Err("--source and --sources-file both give the sources: keep one".into())
            }
            (Some(file), true) => {
                if self
                    .companions()
                    .iter()
                    .any(|(_, values, _, _)| !values.is_empty())
                {
                    return Err(format!("--source-ref, --source-subdir, --source-depth and the --source credentials go with --source; with --sources-file set them in {}", file.display()));
                }
                let specs = read_file(file)?;
                check_names(&specs)?;
                specs
            }
            (None, _) => self.given_as_flags()?,
        };
        for name in &self.allow_stale {
            match specs.iter_mut().find(|s| s.name == *name) {
                Some(spec) => spec.allow_stale = true,
                None => return Err(unknown("--allow-stale-source", name, &specs)),
            }
        }
        Ok(specs)
    }

    /// Each companion flag: its name, its values, the form of one, and what it sets.
    fn companions(&self) -> [(&'static str, &[String], &'static str, Apply); 6] {
        [
            ("--source-ref", &self.source_refs, "NAME=REF", |s, v| {
                s.git_ref = Some(v.into());
                Ok(())
            }),
            (
                "--source-subdir",
                &self.source_subdirs,
                "NAME=PATH",
                |s, v| {
                    s.subdir = Some(v.into());
                    Ok(())
                },
            ),
            ("--source-depth", &self.source_depths, "NAME=N", |s, v| {
                let depth = v.parse().map_err(|_| {
                    format!(
                        "--source-depth {}={v}: the depth is a number of commits (0: all history)",
                        s.name
                    )
                })?;
                s.depth = Some(depth);
                Ok(())
            }),
            (
                "--source-username",
                &self.source_usernames,
                "NAME=USER",
                |s, v| {
                    s.username = Some(v.into());
                    Ok(())
                },
            ),
            (
                "--source-password-file",
                &self.source_password_files,
                "NAME=FILE",
                |s, v| {
                    s.password_file = Some(v.into());
                    Ok(())
                },
            ),
            (
                "--source-ssh-key-file",
                &self.source_ssh_key_files,
                "NAME=FILE",
                |s, v| {
                    s.ssh_key_file = Some(v.into());
                    Ok(())
                },
            ),
        ]
    }

    fn given_as_flags(&self) -> Result<Vec<SourceSpec>, String> {
        let mut specs = Vec::new();
        for value in &self.sources {
            let (name, url) = pair("--source", value, "NAME=URL")?;
            specs.push(SourceSpec {
                name: name.to_string(),
                url: url.to_string(),
                ..SourceSpec::default()
            });
        }
        check_names(&specs)?;
        for (flag, values, form, apply) in self.companions() {
            for value in values {
                let (name, value) = pair(flag, value, form)?;
                match specs.iter().position(|s| s.name == name) {
                    Some(at) => apply(&mut specs[at], value)?,
                    None => return Err(unknown(flag, name, &specs)),
                }
            }
        }
        Ok(specs)
    }
}

/// `NAME=VALUE`, both parts non-empty.
fn pair<'a>(flag: &str, value: &'a str, form: &str) -> Result<(&'a str, &'a str), String> {
    match value.split_once('=') {
        Some((name, rest)) if !name.trim().is_empty() && !rest.trim().is_empty() => {
            Ok((name.trim(), rest.trim()))
        }
        _ => Err(format!("{flag} {value}: expected {form}")),
    }
}

fn unknown(flag: &str, name: &str, specs: &[SourceSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    format!(
        "{flag} names the source '{name}', which is not one of the sources ({}); give it with --source {name}=URL first",
        names.join(", ")
    )
}

/// A name is a directory in every snapshot: letters, digits, `.`, `_`, `-`, not starting with
/// `.` or `-` (dagsnap's own names and options), each name once.
fn check_names(specs: &[SourceSpec]) -> Result<(), String> {
    if specs.is_empty() {
        return Err(
            "no source is given: add --source NAME=URL (or a list `sources` to the sources file)"
                .into(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        let name = spec.name.as_str();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(format!("source name '{name}': a source's name is the directory its files are published in; use up to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.' or '-'"));
        }
        if spec.url.trim().is_empty() {
            return Err(format!("source '{name}' has no URL: give its repository"));
        }
        if !seen.insert(name) {
            return Err(format!(
                "the source '{name}' is given twice: give each source once"
            ));
        }
    }
    Ok(())
}

/// The sources file: TOML for `.toml`, YAML for `.yaml`/`.yml`; otherwise whichever parses.
fn read_file(file: &Path) -> Result<Vec<SourceSpec>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the sources file {}: {e}", file.display()))?;
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let toml = || toml::from_str::<SourcesFile>(&text).map_err(|e| e.to_string());
    let yaml = || serde_norway::from_str::<SourcesFile>(&text).map_err(|e| e.to_string());
    let parsed = match extension.as_deref() {
        Some("toml") => toml(),
        Some("yaml" | "yml") => yaml(),
        _ => toml().or_else(|toml_error| {
            yaml().map_err(|yaml_error| {
                format!("neither TOML ({toml_error}) nor YAML ({yaml_error})")
            })
        }),
    };
    let parsed = parsed.map_err(|e| {
        format!(
            "the sources file {} is not a list `sources` of tables with name and url: {}",
            file.display(),
            e.trim().replace('\n', " ")
        )
    })?;
    Ok(parsed.sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sources: &[&str]) -> SourceArgs {
        SourceArgs {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            ..SourceArgs::default()
        }
    }

    #[test]
    fn companions_name_a_source_given_with_source() {
        let mut a = args(&["dags=/r/dags", "lib=/r/lib"]);
        a.source_refs = vec!["lib=v2".into()];
        a.source_subdirs = vec!["dags=airflow/dags".into()];
        a.source_depths = vec!["lib=0".into()];
        let specs = a.specs().unwrap();
        assert_eq!(specs[0].subdir.as_deref(), Some("airflow/dags"));
        assert_eq!(specs[1].git_ref.as_deref(), Some("v2"));
        assert_eq!(specs[1].depth, Some(0));
        a.source_refs = vec!["plugins=main".into()];
        let e = a.specs().unwrap_err();
        assert!(e.contains("'plugins'") && e.contains("dags, lib"), "{e}");
    }

    #[test]
    fn a_name_must_be_a_plain_directory_name_given_once() {
        for bad in [".dagsnap=/r", "a/b=/r", "-x=/r", "..=/r"] {
            assert!(args(&[bad]).specs().is_err(), "{bad}");
        }
        let e = args(&["a=/r", "a=/s"]).specs().unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(args(&["noequals"]).specs().is_err());
    }

    #[test]
    fn the_file_reads_as_toml_or_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("s.toml");
        std::fs::write(
            &toml,
            "[[sources]]\nname = \"dags\"\nurl = \"/r/dags\"\nsubdir = \"dags\"\n\n[[sources]]\nname = \"lib\"\nurl = \"/r/lib\"\nallow_stale = true\n",
        )
        .unwrap();
        let yaml = dir.path().join("s.yaml");
        std::fs::write(
            &yaml,
            "sources:\n  - name: dags\n    url: /r/dags\n    subdir: dags\n  - name: lib\n    url: /r/lib\n    allow_stale: true\n",
        )
        .unwrap();
        let read = |file: &Path| {
            SourceArgs {
                sources_file: Some(file.to_path_buf()),
                ..SourceArgs::default()
            }
            .specs()
            .unwrap()
        };
        assert_eq!(read(&toml), read(&yaml));
        assert!(read(&toml)[1].allow_stale);
        let typo = dir.path().join("t.yaml");
        std::fs::write(&typo, "sources:\n  - name: dags\n    uri: /r/dags\n").unwrap();
        let e = SourceArgs {
            sources_file: Some(typo),
            ..SourceArgs::default()
        }
        .specs()
        .unwrap_err();
        assert!(e.contains("uri"), "{e}");
    }
}
