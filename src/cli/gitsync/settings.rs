//! Steps 1 and 2 of the module doc: each flag's setting from the environment (with git-sync's
//! precedence of names), then from the command line (pflag's syntax).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use super::flags::{Kind, Spec, FLAGS};
use super::{ConfigError, Note};
use crate::cli::values::{parse_bool, parse_duration, parse_go_int};
use Kind::*;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Default,
    Env(&'static str),
    Flag,
}

#[derive(Debug, Clone)]
struct Setting {
    values: Vec<String>,
    from: Source,
}

/// Every flag's setting, after the environment and the command line.
pub(super) struct Settings {
    by_name: BTreeMap<&'static str, Setting>,
}

/// git-sync's `envString` and friends: the current name, then older names (the last one set
/// wins, with a warning when several are set).
pub(super) fn from_env(
    keys: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> Option<(String, &'static str)> {
    let (first, older) = keys.split_first()?;
    let mut found: Option<(String, &'static str)> = env(first).map(|v| (v, *first));
    let mut count = usize::from(found.is_some());
    for alt in older {
        if let Some(value) = env(alt) {
            found = Some((value, alt));
            count += 1;
        }
    }
    if let Some((_, winner)) = &found {
        if winner != first {
            let how = if count > 1 { "wins over" } else { "for" };
            notes.push(Note::Deprecated(format!("${winner} ({how} ${first})")));
        }
    }
    found
}

impl Settings {
    /// Step 1: each flag's default from the environment (or git-sync's own default).
    pub(super) fn from_environment(
        env: &dyn Fn(&str) -> Option<String>,
        notes: &mut Vec<Note>,
    ) -> Result<Settings, ConfigError> {
        let mut by_name = BTreeMap::new();
        for spec in FLAGS {
            let setting = match from_env(spec.env, env, notes) {
                Some((value, key)) => {
                    let kind_name = match spec.kind {
                        Bool => "bool",
                        Int => "int",
                        Duration => "duration",
                        Float => "float",
                        Str | List | Credentials => "string",
                    };
                    check_value(spec.kind, &value).map_err(|why| {
                        ConfigError(format!("invalid {kind_name} env {key}={value:?}: {why}"))
                    })?;
                    let values = match spec.kind {
                        List => value.split(':').map(str::to_string).collect(),
                        _ => vec![value],
                    };
                    Setting {
                        values,
                        from: Source::Env(key),
                    }
                }
                None => Setting {
                    values: match spec.kind {
                        List => spec.default.split(':').map(str::to_string).collect(),
                        _ => vec![spec.default.to_string()],
                    },
                    from: Source::Default,
                },
            };
            by_name.insert(spec.name, setting);
        }
        Ok(Settings { by_name })
    }

    /// Step 2: the command line, pflag's way.
    pub(super) fn apply_args(&mut self, args: &[OsString]) -> Result<(), ConfigError> {
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].to_str().ok_or_else(|| {
                ConfigError(format!("invalid argument {:?}: not valid UTF-8", args[i]))
            })?;
            i += 1;
            if arg == "--" {
                if let Some(extra) = args.get(i) {
                    return Err(ConfigError(format!(
                        "unexpected argument {extra:?}: git-sync takes only flags"
                    )));
                }
                break;
            }
            let (spec, inline, shown) = if let Some(long) = arg.strip_prefix("--") {
                let (name, value) = match long.split_once('=') {
                    Some((name, value)) => (name, Some(value.to_string())),
                    None => (long, None),
                };
                let spec =
                    find(name).ok_or_else(|| ConfigError(format!("unknown flag: --{name}")))?;
                (spec, value, format!("--{name}"))
            } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                let mut chars = short.chars();
                let first = chars.next().unwrap_or_default();
                let rest = chars.as_str();
                match FLAGS.iter().find(|s| s.short == Some(first)) {
                    // `-v 5`, `-v=5`, `-v5`, `-h`, `-?`.
                    Some(spec) if rest.is_empty() || rest.starts_with('=') || spec.kind == Int => {
                        let value = (!rest.is_empty())
                            .then(|| rest.strip_prefix('=').unwrap_or(rest).to_string());
                        (spec, value, format!("-{first}"))
                    }
                    _ if first == '?' && rest.is_empty() => (
                        find("help").ok_or_else(|| ConfigError("internal: no help".into()))?,
                        None,
                        "-?".into(),
                    ),
                    // v3 (Go's flag package) wrote long names with one dash: `-repo=...`.
                    _ => {
                        let (name, value) = match short.split_once('=') {
                            Some((name, value)) => (name, Some(value.to_string())),
                            None => (short, None),
                        };
                        let spec = find(name).ok_or_else(|| {
                            ConfigError(format!("unknown shorthand flag: '{first}' in {arg}"))
                        })?;
                        (spec, value, format!("-{name}"))
                    }
                }
            } else {
                return Err(ConfigError(format!(
                    "unexpected argument {arg:?}: git-sync takes only flags (did you mean --repo={arg}?)"
                )));
            };
            let value = match (inline, spec.kind) {
                (Some(value), _) => value,
                (None, Bool) => "true".to_string(),
                (None, _) => {
                    let value = args
                        .get(i)
                        .and_then(|v| v.to_str())
                        .ok_or_else(|| ConfigError(format!("flag needs an argument: {shown}")))?;
                    i += 1;
                    value.to_string()
                }
            };
            check_value(spec.kind, &value).map_err(|why| {
                ConfigError(format!(
                    "invalid argument {value:?} for \"{shown}\" flag: {why}"
                ))
            })?;
            let setting = self
                .by_name
                .get_mut(spec.name)
                .ok_or_else(|| ConfigError(format!("internal: no setting for {}", spec.name)))?;
            let repeatable = matches!(spec.kind, List | Credentials);
            if repeatable && setting.from == Source::Flag {
                setting.values.push(value);
            } else {
                setting.values = vec![value];
            }
            setting.from = Source::Flag;
        }
        Ok(())
    }

    fn raw(&self, name: &str) -> &Setting {
        // Every name asked for is in FLAGS (a test walks them).
        self.by_name
            .get(name)
            .unwrap_or_else(|| unreachable!("no git-sync flag {name}"))
    }

    /// Whether `name` is one of git-sync's flags.
    #[cfg(test)]
    pub(super) fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub(super) fn string(&self, name: &str) -> String {
        self.raw(name).values.first().cloned().unwrap_or_default()
    }

    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.raw(name)
            .values
            .iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect()
    }

    pub(super) fn given(&self, name: &str) -> bool {
        self.raw(name).from != Source::Default
    }

    // Values were checked when they were set: these only convert.
    pub(super) fn bool(&self, name: &str) -> bool {
        parse_bool(&self.string(name)).unwrap_or(false)
    }

    pub(super) fn int(&self, name: &str) -> i64 {
        parse_go_int(&self.string(name)).unwrap_or(0)
    }

    pub(super) fn duration(&self, name: &str) -> Duration {
        parse_duration(&self.string(name)).unwrap_or_default()
    }

    pub(super) fn float(&self, name: &str) -> f64 {
        self.string(name).trim().parse().unwrap_or(0.0)
    }
}

fn find(name: &str) -> Option<&'static Spec> {
    FLAGS.iter().find(|s| s.name == name)
}

pub(super) fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Bool => parse_bool(value).map(drop),
        Int => parse_go_int(value).map(drop),
        Duration => parse_duration(value).map(drop),
        Float => value
            .trim()
            .parse::<f64>()
            .map(drop)
            .map_err(|_| format!("invalid number '{value}'")),
        Credentials if !value.trim().is_empty() => parse_credentials(value).map(drop),
        Str | List | Credentials => Ok(()),
    }
}

/// One `--credential`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(super) struct Credential {
    pub url: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default, rename = "password-file")]
    pub password_file: String,
}

/// A credential (a JSON object) or several (a JSON list).
pub(super) fn parse_credentials(text: &str) -> Result<Vec<Credential>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let parsed = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|c| vec![c]),
    };
    parsed.map_err(|e| format!("not a credential: {e}"))
}
