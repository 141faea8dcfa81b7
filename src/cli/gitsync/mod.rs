//! The git-sync personality: dagsnap started as `git-sync` (a symlink named so, or
//! `dagsnap git-sync ...`) reads git-sync v4's flags and environment, and v3's names the Airflow
//! Helm chart still sets, with git-sync's precedence and defaults, and runs dagsnap's loop.
//!
//! How a setting is resolved, as git-sync's `env.go` and `main.go` do it:
//!
//! 1. The environment gives each flag its default: the current name (`GITSYNC_REPO`) is read
//!    first, then the older ones (`GIT_SYNC_REPO`); when several are set, the last older one
//!    wins, with a warning. A value that does not parse is fatal, as in git-sync, even if a flag
//!    overrides it.
//! 2. A flag on the command line beats the environment (pflag syntax: `--name=value`,
//!    `--name value`, `--bool`, `--bool=false`, `-v 5`; single-dash long names as v3 wrote
//!    them are accepted too).
//! 3. v3 names override their v4 counterparts when set: `--branch`/`--rev` set `--ref`,
//!    `--dest` sets `--link`, `--wait` (seconds) sets `--period`, `--timeout` (seconds) sets
//!    `--sync-timeout`, `--max-sync-failures` sets `--max-failures`, `--sync-hook-command` sets
//!    `--exechook-command`.
//! 4. The result is checked as git-sync checks it, with git-sync's wording, and translated into
//!    dagsnap's own `sync` settings, a typed [`Translation`] (one group of settings at a time).
//!    Where dagsnap behaves differently on purpose, a note says so once at start; a setting
//!    dagsnap cannot honour fails at start, naming it.
//!
//! - `flags`: git-sync's flags, their environment variables and defaults.
//! - `settings`: steps 1 and 2.
//! - `translate`: steps 3 and 4.
//! - `argv`: the translation as the `sync` command line clap parses.

mod argv;
mod flags;
mod settings;
mod translate;

use std::ffi::OsString;

use flags::FLAGS;
use settings::Settings;
pub use translate::Translation;

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Print this and exit 0 (`--help`, `--man`, `--version`).
    Print(String),
    Run(Box<Invocation>),
}

/// A git-sync configuration, as dagsnap runs it.
#[derive(Debug)]
pub struct Invocation {
    pub translation: Translation,
    /// Said once at start: deprecated names in use, and what dagsnap does differently.
    pub notes: Vec<Note>,
}

impl Invocation {
    /// dagsnap's `sync` command line (parsed by clap, so dagsnap's own checks apply too).
    pub fn argv(&self) -> Vec<OsString> {
        self.translation.argv()
    }

    /// `$GITSYNC_PASSWORD`, or a `--credential` password: never on a command line.
    pub fn password(&self) -> Option<String> {
        self.translation.credentials.password.clone()
    }

    /// `$GITSYNC_GITHUB_APP_PRIVATE_KEY`: never on the command line.
    pub fn github_app_key(&self) -> Option<String> {
        self.translation.credentials.other.github_app_key.clone()
    }

    /// git-sync runs `--exechook-command` as a program, not through a shell.
    pub fn exechook_direct(&self) -> bool {
        self.translation.hooks.exechook.is_some()
    }

    /// The pre-publish hook, like the exec hook, is a program, not a shell command.
    pub fn check_direct(&self) -> bool {
        self.translation.hooks.check.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
    /// A deprecated name in use; [`parse`] says them all in one [`Note::Info`].
    Deprecated(String),
}

/// A configuration git-sync would refuse too, or one dagsnap cannot honour: one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse git-sync's command line `args` (without the program name) and the environment `env`.
pub fn parse(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    let mut notes = Vec::new();
    let mut settings = Settings::from_environment(env, &mut notes)?;
    settings.apply_args(args)?;
    if settings.bool("version") {
        return Ok(Parsed::Print(format!(
            "dagsnap {} (running as git-sync)\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if settings.bool("help") || settings.bool("man") {
        return Ok(Parsed::Print(help()));
    }
    let translation = translate::translate(&settings, env, &mut notes)?;
    Ok(Parsed::Run(Box::new(Invocation {
        translation,
        notes: with_deprecations_in_one_line(notes),
    })))
}

/// The notes, every [`Note::Deprecated`] merged into one line where the first one was.
fn with_deprecations_in_one_line(notes: Vec<Note>) -> Vec<Note> {
    let names: Vec<String> = notes
        .iter()
        .filter_map(|n| match n {
            Note::Deprecated(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut merged = Some(Note::Info(format!(
        "deprecated git-sync names in use, read as git-sync reads them: {}",
        names.join(", ")
    )));
    notes
        .into_iter()
        .filter_map(|n| match n {
            Note::Deprecated(_) => merged.take(),
            other => Some(other),
        })
        .collect()
}

pub(super) fn invalid(text: impl Into<String>) -> ConfigError {
    ConfigError(text.into())
}

fn help() -> String {
    let mut out = String::from(
        "Usage: git-sync [FLAGS...]\n\n\
         This is dagsnap running as git-sync: it reads git-sync's flags and environment and\n\
         publishes each commit as an atomic, read-only snapshot behind --link.\n\
         See docs/migrating.md for what each flag does here.\n\n FLAGS (and their environment variables):\n",
    );
    for spec in FLAGS {
        let short = spec.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let env = if spec.env.is_empty() {
            String::new()
        } else {
            format!(" (${})", spec.env.join(", $"))
        };
        out.push_str(&format!(
            "    {short}--{}{env}\n            {}",
            spec.name, spec.help
        ));
        if !spec.default.is_empty() && !matches!(spec.default, "false" | "0" | "-1") {
            out.push_str(&format!(" [default: {}]", spec.default));
        }
        out.push('\n');
    }
    out.push_str("\n ENVIRONMENT VARIABLES:\n    $GITSYNC_PASSWORD (or $GIT_SYNC_PASSWORD)\n            the password or token for --username\n");
    out
}

#[cfg(test)]
mod tests {
    use super::flags::Kind::{Credentials, List, Str};
    use super::settings::check_value;
    use super::*;
    use crate::cli::values::parse_git_config;
    use std::collections::BTreeMap;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args, &|key| env.get(key).cloned())? {
            Parsed::Run(invocation) => Ok(*invocation),
            Parsed::Print(text) => panic!("printed {text}"),
        }
    }

    /// The value dagsnap receives for `--name`, if any.
    fn option(invocation: &Invocation, name: &str) -> Option<String> {
        let flag = OsString::from(format!("--{name}"));
        let argv = invocation.argv();
        let at = argv.iter().position(|a| *a == flag)?;
        argv.get(at + 1).map(|v| v.to_string_lossy().into_owned())
    }

    fn has(invocation: &Invocation, name: &str) -> bool {
        let flag = OsString::from(format!("--{name}"));
        invocation.argv().contains(&flag)
    }

    const BASE: [(&str, &str); 2] = [
        ("GITSYNC_REPO", "https://h/org/dags.git"),
        ("GITSYNC_ROOT", "/git"),
    ];

    #[test]
    fn every_flag_has_a_setting_and_a_known_kind_of_default() {
        let settings = Settings::from_environment(&|_| None, &mut Vec::new()).unwrap();
        for spec in FLAGS {
            assert!(settings.has(spec.name));
            if spec.kind != Credentials && spec.kind != List && spec.kind != Str {
                check_value(spec.kind, spec.default).unwrap();
            }
        }
    }

    #[test]
    fn a_flag_beats_the_environment_and_an_older_name_beats_a_newer_one() {
        let i = run(
            &["--period=3s"],
            &[BASE[0], BASE[1], ("GITSYNC_PERIOD", "9s")],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("3000000000ns"));
        let i = run(
            &[],
            &[
                BASE[0],
                BASE[1],
                ("GITSYNC_PERIOD", "9s"),
                ("GIT_SYNC_PERIOD", "4s"),
            ],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("4000000000ns"));
        assert!(i.notes.contains(&Note::Info(
            "deprecated git-sync names in use, read as git-sync reads them: $GIT_SYNC_PERIOD (wins over $GITSYNC_PERIOD)".into()
        )));
        // v3's --wait (seconds) beats v4's --period.
        let i = run(
            &["--period", "9s"],
            &[BASE[0], BASE[1], ("GIT_SYNC_WAIT", "1.5")],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("1500000000ns"));
    }

    #[test]
    fn the_charts_v3_and_v4_names_together_resolve_as_git_sync_resolves_them() {
        let i = run(
            &[],
            &[
                ("GIT_SYNC_REV", "HEAD"),
                ("GITSYNC_REF", "v2-2-stable"),
                ("GIT_SYNC_BRANCH", "main"),
                ("GIT_SYNC_REPO", "https://h/org/dags.git"),
                ("GITSYNC_REPO", "https://h/org/dags.git"),
                ("GIT_SYNC_DEPTH", "1"),
                ("GITSYNC_DEPTH", "1"),
                ("GIT_SYNC_ROOT", "/git"),
                ("GITSYNC_ROOT", "/git"),
                ("GIT_SYNC_DEST", "repo"),
                ("GITSYNC_LINK", "repo"),
                ("GIT_SYNC_ADD_USER", "true"),
                ("GITSYNC_ADD_USER", "true"),
                ("GITSYNC_PERIOD", "5s"),
                ("GIT_SYNC_MAX_SYNC_FAILURES", "0"),
                ("GITSYNC_MAX_FAILURES", "0"),
                ("GIT_SYNC_USERNAME", "u"),
                ("GITSYNC_USERNAME", "u"),
                ("GIT_SYNC_PASSWORD", "p"),
                ("GITSYNC_PASSWORD", "p"),
            ],
        )
        .unwrap();
        assert_eq!(
            option(&i, "ref").as_deref(),
            Some("main"),
            "--branch wins over --ref when --rev is HEAD"
        );
        assert_eq!(option(&i, "link").as_deref(), Some("repo"));
        assert_eq!(option(&i, "root").as_deref(), Some("/git"));
        assert_eq!(option(&i, "period").as_deref(), Some("5000000000ns"));
        assert_eq!(option(&i, "max-failures").as_deref(), Some("0"));
        assert_eq!(option(&i, "username").as_deref(), Some("u"));
        assert_eq!(i.password().as_deref(), Some("p"));
        assert!(has(&i, "adopt-git-sync"));
    }

    #[test]
    fn failure_budgets_translate_to_failures_tolerated() {
        for (given, tolerated) in [("0", "0"), ("1", "0"), ("3", "2"), ("-1", "-1")] {
            let i = run(&["--max-failures", given], &BASE).unwrap();
            assert_eq!(
                option(&i, "max-failures").as_deref(),
                Some(tolerated),
                "{given}"
            );
        }
        let i = run(&["--init-max-failures=5", "--init-period=500ms"], &BASE).unwrap();
        assert_eq!(option(&i, "init-max-failures").as_deref(), Some("4"));
        assert_eq!(option(&i, "init-period").as_deref(), Some("500000000ns"));
    }

    #[test]
    fn the_link_defaults_to_the_last_part_of_the_repository() {
        let i = run(&[], &BASE).unwrap();
        assert_eq!(option(&i, "link").as_deref(), Some("dags.git"));
        let i = run(&["-dest=dags", "-wait=2"], &BASE).unwrap();
        assert_eq!(
            option(&i, "link").as_deref(),
            Some("dags"),
            "v3's single-dash flags"
        );
        assert_eq!(option(&i, "period").as_deref(), Some("2000000000ns"));
    }

    /// Arguments, environment, and what the error must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn bad_values_get_git_sync_s_one_line_errors() {
        let cases: [Case; 15] = [
            (&[], &[BASE[1]], "required flag: --repo must be specified"),
            (&[], &[BASE[0]], "required flag: --root must be specified"),
            (&["--period=5ms"], &BASE, "--period must be at least 10ms"),
            (
                &["--depth=-1"],
                &BASE,
                "--depth must be greater than or equal to 0",
            ),
            (&["--nope"], &BASE, "unknown flag: --nope"),
            (
                &["--one-time=maybe"],
                &BASE,
                "invalid argument \"maybe\" for \"--one-time\" flag",
            ),
            (&["--repo"], &BASE, "flag needs an argument: --repo"),
            (
                &[],
                &[BASE[0], BASE[1], ("GITSYNC_ONE_TIME", "maybe")],
                "invalid bool env GITSYNC_ONE_TIME=\"maybe\"",
            ),
            (
                &[],
                &[BASE[0], BASE[1], ("GITSYNC_PERIOD", "10")],
                "invalid duration env GITSYNC_PERIOD=\"10\"",
            ),
            (
                &["--branch=a", "--rev=b"],
                &BASE,
                "can't set --ref from deprecated --branch and --rev",
            ),
            (
                &["--username=u"],
                &BASE,
                "$GITSYNC_PASSWORD or --password-file must be specified",
            ),
            (&["--submodules=all"], &BASE, "--submodules must be one of"),
            (
                &["--askpass-url=http://x/", "--username=u", "--password-file=/p"],
                &BASE,
                "only one of --password-file/$GITSYNC_PASSWORD, --askpass-url and GitHub app auth",
            ),
            (
                &["--github-app-installation-id=42"],
                &BASE,
                "--github-app-private-key-file or $GITSYNC_GITHUB_APP_PRIVATE_KEY must be specified",
            ),
            (
                &["--sync-on-signal=SIGNOPE"],
                &BASE,
                "--sync-on-signal must be a valid signal",
            ),
        ];
        for (args, env, needle) in cases {
            let err = run(args, env).unwrap_err().0;
            assert!(err.contains(needle), "{args:?} {env:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn booleans_and_ints_read_like_go() {
        let i = run(&["--one-time=T"], &BASE).unwrap();
        assert!(has(&i, "one-time"));
        let i = run(
            &[],
            &[
                BASE[0],
                BASE[1],
                ("GITSYNC_ONE_TIME", "1"),
                ("GITSYNC_DEPTH", "0x10"),
            ],
        )
        .unwrap();
        assert!(has(&i, "one-time"));
        assert_eq!(option(&i, "depth").as_deref(), Some("16"));
        let i = run(&["-v", "6"], &BASE).unwrap();
        assert_eq!(option(&i, "log-level").as_deref(), Some("trace"));
        let i = run(&["-v2"], &BASE).unwrap();
        assert_eq!(option(&i, "log-level").as_deref(), Some("debug"));
    }

    #[test]
    fn ssh_settings_apply_to_ssh_remotes_only() {
        let env = [
            ("GITSYNC_REPO", "git@h:org/dags.git"),
            BASE[1],
            ("GIT_SSH_KEY_FILE", "/k1:/k2"),
        ];
        let i = run(&[], &env).unwrap();
        let keys: Vec<_> = i
            .argv()
            .windows(2)
            .filter(|w| w[0] == "--ssh-key-file")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(keys, ["/k1", "/k2"]);
        assert_eq!(
            option(&i, "ssh-known-hosts-file").as_deref(),
            Some("/etc/git-secret/known_hosts")
        );
        let i = run(&[], &BASE).unwrap();
        assert!(!has(&i, "ssh-key-file") && !has(&i, "ssh-known-hosts"));
    }

    #[test]
    fn git_config_reads_quoted_pairs() {
        assert_eq!(
            parse_git_config(r#"http.sslCAInfo:/ca.pem,"safe.directory":"*""#).unwrap(),
            [
                ("http.sslCAInfo".to_string(), "/ca.pem".to_string()),
                ("safe.directory".into(), "*".into())
            ]
        );
        assert!(parse_git_config("novalue").is_err());
        // git-sync's escapes, in quoted keys and in every value.
        assert_eq!(
            parse_git_config(r#""a.b":"x\n\ty",c.d:p\,q"#).unwrap(),
            [
                ("a.b".to_string(), "x\n\ty".to_string()),
                ("c.d".into(), "p,q".into())
            ]
        );
        assert!(parse_git_config(r#"a.b:x\q"#).is_err());
        let i = run(&["--git-config=http.sslCAInfo:/ca.pem"], &BASE).unwrap();
        assert_eq!(option(&i, "ca-file").as_deref(), Some("/ca.pem"));
        // Every key is passed on, from --git-config and each --git-config-add, in order.
        let i = run(
            &[
                "--git-config=core.autocrlf:true",
                "--git-config-add=safe.directory:*",
                "--git-config-add",
                "http.lowSpeedLimit:1000",
            ],
            &BASE,
        )
        .unwrap();
        let passed = option(&i, "git-config").unwrap();
        assert_eq!(
            parse_git_config(&passed).unwrap(),
            [
                ("core.autocrlf".to_string(), "true".to_string()),
                ("safe.directory".into(), "*".into()),
                ("http.lowSpeedLimit".into(), "1000".into())
            ]
        );
        assert!(run(&["--git-config-add=a:b,c:d"], &BASE).is_err());
    }

    #[test]
    fn filters_git_knows_are_taken_and_others_refused() {
        for good in [
            "blob:none",
            "blob:limit=1m",
            "tree:0",
            "combine:blob:none+tree:3",
        ] {
            assert!(run(&[&format!("--filter={good}")], &BASE).is_ok(), "{good}");
        }
        for bad in ["blob:some", "tree:x", "nothing"] {
            let e = run(&[&format!("--filter={bad}")], &BASE).unwrap_err().0;
            assert!(e.contains("is not a git filter"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_credential_for_the_repository_is_used() {
        let i = run(
            &[r#"--credential={"url":"https://h/org","username":"bot","password-file":"/s/t"}"#],
            &BASE,
        )
        .unwrap();
        assert_eq!(option(&i, "username").as_deref(), Some("bot"));
        assert_eq!(option(&i, "password-file").as_deref(), Some("/s/t"));
    }
}
