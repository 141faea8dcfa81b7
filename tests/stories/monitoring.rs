//! The monitoring kit an on-call engineer imports (`deploy/monitoring/`), tested like code:
//! every alert fires when it should and stays quiet otherwise, on series named and labelled
//! exactly as running publishers export them (a renamed metric breaks these stories), and the
//! dashboard's queries parse and name only exported metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::servers::free_port;
use crate::support::*;

const JOB: &str = "monitoring/dagsnap";
const INSTANCE: &str = "10.1.2.3:8080";
const POD: &str = "airflow-scheduler-0";
/// Samples per input series: one a minute for a little more than a day.
const SAMPLES: usize = 1600;

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

fn promtool() -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        skip(
            "the monitoring stories",
            "promtool is not installed (scripts/test installs Debian's prometheus)",
        );
    }
    found
}

/// A publisher's `/metrics` once `ready` holds for it.
fn scrape_when(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut text = String::new();
    wait_until(Duration::from_secs(60), what, || {
        text = http("GET", &url, &[], b"").1;
        ready(&text)
    });
    text
}

/// Two real publishers' metrics: one following a repository with a check and a hook (every
/// family of a healthy sidecar), one following two sources with signatures required (the
/// sources' and the refusals' series). Series text to scraped value; scraped once for both
/// stories.
fn scraped() -> &'static BTreeMap<String, f64> {
    static SCRAPED: std::sync::OnceLock<BTreeMap<String, f64>> = std::sync::OnceLock::new();
    SCRAPED.get_or_init(scrape_two_publishers)
}

fn scrape_two_publishers() -> BTreeMap<String, f64> {
    let remote = Remote::new();
    remote.commit(&[("dag.py", "x = 1\n")], "one");
    let scratch = Scratch::new();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let _one = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "100ms",
            "--http-bind",
            &bind,
            "--check-command",
            "true",
            "--exechook-command",
            "true",
        ],
    );
    let healthy = scrape_when(port, "a publish", |m| {
        metric(m, r#"dagsnap_syncs_total{result="published"}"#) >= 1.0
    });
    // The series the rules rest on say what is true of this publisher.
    let committed: f64 = remote.git(&["log", "-1", "--format=%ct"]).parse().unwrap();
    for (series, check) in [
        (
            "dagsnap_ready",
            Box::new(|v: f64| v == 1.0) as Box<dyn Fn(f64) -> bool>,
        ),
        (
            "dagsnap_period_seconds",
            Box::new(|v| (v - 0.1).abs() < 1e-9),
        ),
        ("dagsnap_retention_keep", Box::new(|v| v == 5.0)),
        ("dagsnap_root_size_bytes", Box::new(|v| v > 0.0)),
        ("dagsnap_root_available_bytes", Box::new(|v| v > 0.0)),
        (
            "dagsnap_live_commit_timestamp_seconds",
            Box::new(move |v| v == committed),
        ),
    ] {
        let value = metric(&healthy, series);
        assert!(check(value), "{series} is {value}:\n{healthy}");
    }

    let (a, b) = (Remote::new(), Remote::new());
    a.commit(&[("a.py", "a = 1\n")], "a");
    b.commit(&[("b.py", "b = 1\n")], "b");
    let other = Scratch::new();
    let signers = other.path("allowed_signers");
    let key = other.path("key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ada", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success());
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    fs::write(&signers, format!("ada@example.com {}", public.trim())).unwrap();
    let port = free_port();
    let log = other.path("sources.log");
    let mut sources = dagsnap(other.tmp.path());
    sources
        .args([
            "sync",
            "--period",
            "100ms",
            "--http-bind",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--source",
            &format!("a={}", a.url()),
            "--source",
            &format!("b={}", b.url()),
        ])
        .args(["--verify-signatures", "commit", "--allowed-signers"])
        .arg(&signers)
        .arg("--root")
        .arg(other.root())
        .arg("--cache-dir")
        .arg(other.cache())
        .stderr(fs::File::create(&log).unwrap());
    let _two = Group::spawn(&mut sources);
    let several = scrape_when(port, "a refused signature", |m| {
        metric(m, r#"dagsnap_signature_refusals_total{reason="unsigned"}"#) >= 1.0
            && m.contains("dagsnap_source_consecutive_failures{")
    });
    let mut series = BTreeMap::new();
    for text in [&several, &healthy] {
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').unwrap();
            series.insert(name.to_string(), value.parse().unwrap_or(0.0));
        }
    }
    series
}

/// The metric name of a series (`name{labels}` or `name`).
fn family(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// A series with the labels Prometheus adds when it scrapes a pod.
fn as_scraped(series: &str) -> String {
    let target = format!(r#"job="{JOB}",instance="{INSTANCE}",pod="{POD}""#);
    match series.split_once('{') {
        Some((name, rest)) => format!("{name}{{{target},{rest}"),
        None => format!("{series}{{{target}}}"),
    }
}

/// Values for one family (optionally only its series with a label), overriding the scraped
/// ones in a case.
#[derive(Clone)]
struct Set {
    family: &'static str,
    label: Option<&'static str>,
    values: String,
}

fn set(family: &'static str, values: &str) -> Set {
    Set {
        family,
        label: None,
        values: values.to_string(),
    }
}

fn set_where(family: &'static str, label: &'static str, values: &str) -> Set {
    Set {
        family,
        label: Some(label),
        values: values.to_string(),
    }
}

/// A healthy publisher: a success every minute, ready, nothing wrong, room on the volume.
fn healthy() -> Vec<Set> {
    vec![
        set(
            "dagsnap_last_success_timestamp_seconds",
            &format!("0+60x{SAMPLES}"),
        ),
        set("dagsnap_ready", &format!("1x{SAMPLES}")),
        set("dagsnap_period_seconds", &format!("10x{SAMPLES}")),
        set("dagsnap_consecutive_failures", &format!("0x{SAMPLES}")),
        set(
            "dagsnap_source_consecutive_failures",
            &format!("0x{SAMPLES}"),
        ),
        set("dagsnap_lock_fault", &format!("0x{SAMPLES}")),
        set("dagsnap_standing_back", &format!("0x{SAMPLES}")),
        set("dagsnap_pinned", &format!("0x{SAMPLES}")),
        set("dagsnap_retained_snapshots", &format!("3x{SAMPLES}")),
        set("dagsnap_retention_keep", &format!("5x{SAMPLES}")),
        set("dagsnap_root_size_bytes", &format!("10000000000x{SAMPLES}")),
        set(
            "dagsnap_root_available_bytes",
            &format!("5000000000x{SAMPLES}"),
        ),
    ]
}

/// At an evaluation time, an alert and the extra labels of each alert expected then (none:
/// it must not fire).
type Expectation = (
    &'static str,
    &'static str,
    Vec<Vec<(&'static str, &'static str)>>,
);

/// One `promtool test rules` case: the scraped series (as a healthy publisher, changed by
/// `sets`), and what each alert does at which time.
struct Case {
    name: &'static str,
    sets: Vec<Set>,
    /// `up` of the publisher's target.
    up: String,
    /// No dagsnap series at all (only `up`).
    none: bool,
    expect: Vec<Expectation>,
}

fn case(name: &'static str, sets: Vec<Set>) -> Case {
    Case {
        name,
        sets,
        up: format!("1x{SAMPLES}"),
        none: false,
        expect: Vec::new(),
    }
}

impl Case {
    fn fires(
        mut self,
        at: &'static str,
        alert: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Case {
        self.expect.push((at, alert, vec![labels.to_vec()]));
        self
    }
    fn quiet(mut self, at: &'static str, alert: &'static str) -> Case {
        self.expect.push((at, alert, Vec::new()));
        self
    }
}

const ALERTS: [(&str, &str); 12] = [
    ("DagsnapDagsStale", "critical"),
    ("DagsnapSyncFailing", "warning"),
    ("DagsnapSourceFailing", "warning"),
    ("DagsnapLocksBroken", "critical"),
    ("DagsnapTipRejected", "warning"),
    ("DagsnapSignatureRefused", "warning"),
    ("DagsnapVolumeFull", "warning"),
    ("DagsnapRetentionOverCap", "warning"),
    ("DagsnapDown", "critical"),
    ("DagsnapAbsent", "critical"),
    ("DagsnapStandingBack", "warning"),
    ("DagsnapPinnedTooLong", "info"),
];

fn cases() -> Vec<Case> {
    let rising = "0+1x1600";
    let mut quiet = case("a healthy publisher raises nothing, for a day", vec![]);
    for (alert, _) in ALERTS {
        quiet = quiet.quiet("2h", alert).quiet("25h", alert);
    }
    let mut stale = healthy();
    stale[0] = set(
        "dagsnap_last_success_timestamp_seconds",
        &format!("0x{SAMPLES}"),
    );
    let mut not_ready = healthy();
    not_ready[1] = set("dagsnap_ready", &format!("1x10 0x{SAMPLES}"));
    vec![
        quiet,
        case("no success for 10 periods is stale", stale)
            .quiet("8m", "DagsnapDagsStale")
            .fires("30m", "DagsnapDagsStale", &[]),
        case("a publisher that is not ready is stale", not_ready)
            .quiet("12m", "DagsnapDagsStale")
            .fires("20m", "DagsnapDagsStale", &[]),
        case(
            "failures in a row",
            vec![set("dagsnap_consecutive_failures", rising)],
        )
        .quiet("10m", "DagsnapSyncFailing")
        .fires("30m", "DagsnapSyncFailing", &[]),
        case(
            "one source fails",
            vec![set_where(
                "dagsnap_source_consecutive_failures",
                r#"source="b""#,
                rising,
            )],
        )
        .quiet("10m", "DagsnapSourceFailing")
        .fires("30m", "DagsnapSourceFailing", &[("source", "b")]),
        case(
            "locks do not reach a peer",
            vec![set("dagsnap_lock_fault", &format!("0x5 1x{SAMPLES}"))],
        )
        .quiet("8m", "DagsnapLocksBroken")
        .fires("20m", "DagsnapLocksBroken", &[]),
        case(
            "the check rejects the tip at every poll",
            vec![set_where(
                "dagsnap_syncs_total",
                r#"result="rejected""#,
                "0+6x1600",
            )],
        )
        .quiet("20m", "DagsnapTipRejected")
        .fires("60m", "DagsnapTipRejected", &[("result", "rejected")]),
        case(
            "a rejected commit while others go live is no alert",
            vec![
                set_where("dagsnap_syncs_total", r#"result="rejected""#, "0+6x1600"),
                set_where("dagsnap_syncs_total", r#"result="published""#, "0+1x1600"),
            ],
        )
        .quiet("60m", "DagsnapTipRejected"),
        case(
            "a signature is refused",
            vec![set_where(
                "dagsnap_signature_refusals_total",
                r#"reason="unsigned""#,
                "1x30 2x1600",
            )],
        )
        .quiet("20m", "DagsnapSignatureRefused")
        .fires("35m", "DagsnapSignatureRefused", &[("reason", "unsigned")])
        .quiet("60m", "DagsnapSignatureRefused"),
        case(
            "the volume fills up",
            vec![set(
                "dagsnap_root_available_bytes",
                &format!("500000000x{SAMPLES}"),
            )],
        )
        .quiet("10m", "DagsnapVolumeFull")
        .fires("20m", "DagsnapVolumeFull", &[]),
        case(
            "retention far over --keep",
            vec![set("dagsnap_retained_snapshots", &format!("30x{SAMPLES}"))],
        )
        .quiet("30m", "DagsnapRetentionOverCap")
        .fires("2h", "DagsnapRetentionOverCap", &[]),
        Case {
            up: format!("1x5 0x{SAMPLES}"),
            ..case("the publisher does not answer", vec![])
        }
        .quiet("8m", "DagsnapDown")
        .fires("15m", "DagsnapDown", &[]),
        Case {
            none: true,
            ..case("no dagsnap series at all", vec![])
        }
        .quiet("10m", "DagsnapAbsent")
        .fires("20m", "DagsnapAbsent", &[]),
        case(
            "another configuration took the root over",
            vec![set("dagsnap_standing_back", &format!("1x{SAMPLES}"))],
        )
        .quiet("20m", "DagsnapStandingBack")
        .fires("40m", "DagsnapStandingBack", &[]),
        case(
            "pinned for a day",
            vec![set("dagsnap_pinned", &format!("1x{SAMPLES}"))],
        )
        .quiet("23h", "DagsnapPinnedTooLong")
        .fires("25h", "DagsnapPinnedTooLong", &[]),
    ]
}

/// The input series of `case`: every scraped series, as Prometheus would label it, with the
/// values `case` sets (each set must name a series the publishers export).
fn input_series(case: &Case, scraped: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    let sets: Vec<Set> = healthy().into_iter().chain(case.sets.clone()).collect();
    for set in &sets {
        assert!(
            scraped
                .keys()
                .any(|s| family(s) == set.family && set.label.is_none_or(|l| s.contains(l))),
            "{}: no exported series {}{}",
            case.name,
            set.family,
            set.label.map(|l| format!("{{{l}}}")).unwrap_or_default()
        );
    }
    if !case.none {
        for (series, value) in scraped {
            let values = sets
                .iter()
                .rev()
                .find(|s| family(series) == s.family && s.label.is_none_or(|l| series.contains(l)))
                .map(|s| s.values.clone())
                .unwrap_or_else(|| format!("{value}x{SAMPLES}"));
            out.push_str(&format!(
                "      - series: '{}'\n        values: '{values}'\n",
                as_scraped(series)
            ));
        }
    }
    out.push_str(&format!(
        "      - series: 'up{{job=\"{JOB}\",instance=\"{INSTANCE}\",pod=\"{POD}\"}}'\n        values: '{}'\n",
        case.up
    ));
    out
}

/// Each alert's annotations as rules.yaml writes them (templates of `$labels` only).
fn annotations() -> BTreeMap<String, BTreeMap<String, String>> {
    let rules: serde_json::Value =
        serde_norway::from_str(&fs::read_to_string(kit("rules.yaml")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let annotations = rule["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        out.insert(rule["alert"].as_str().unwrap().to_string(), annotations);
    }
    out
}

/// A template as Prometheus renders it with `labels`.
fn rendered(template: &str, labels: &BTreeMap<&str, &str>) -> String {
    let mut text = template.to_string();
    for (name, value) in labels {
        text = text.replace(&format!("{{{{ $labels.{name} }}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "a template the story cannot render: {template}"
    );
    text
}

fn alert_tests(case: &Case) -> String {
    let annotations = annotations();
    let mut out = String::from("    alert_rule_test:\n");
    for (at, alert, expected) in &case.expect {
        out.push_str(&format!(
            "      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts:"
        ));
        if expected.is_empty() {
            out.push_str(" []\n");
            continue;
        }
        out.push('\n');
        let severity = ALERTS.iter().find(|(a, _)| a == alert).unwrap().1;
        for extra in expected {
            let mut labels: BTreeMap<&str, &str> = BTreeMap::from([("severity", severity)]);
            if *alert != "DagsnapAbsent" {
                labels.extend([("job", JOB), ("instance", INSTANCE), ("pod", POD)]);
            }
            labels.extend(extra.iter().copied());
            out.push_str("          - exp_labels:\n");
            for (k, v) in &labels {
                out.push_str(&format!("              {k}: '{v}'\n"));
            }
            out.push_str("            exp_annotations:\n");
            for (k, template) in &annotations[*alert] {
                let text = rendered(template, &labels).replace('\'', "''");
                out.push_str(&format!("              {k}: '{text}'\n"));
            }
        }
    }
    out
}

#[test]
fn every_alert_fires_when_it_should_and_stays_quiet_otherwise_on_series_a_publisher_exports() {
    if !promtool() {
        return;
    }
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(kit("rules.yaml"))
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    let scraped = scraped();
    let cases = cases();
    let tested: BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.expect.iter().filter(|e| !e.2.is_empty()).map(|e| e.1))
        .collect();
    let rules = fs::read_to_string(kit("rules.yaml")).unwrap();
    for (alert, _) in ALERTS {
        assert!(tested.contains(alert), "no case makes {alert} fire");
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "{alert} is not in rules.yaml"
        );
    }
    assert_eq!(
        rules.matches("- alert: ").count(),
        ALERTS.len(),
        "every alert of rules.yaml has its cases here"
    );
    let mut file = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n",
        kit("rules.yaml").display()
    );
    for case in &cases {
        file.push_str(&format!(
            "  # {}\n  - interval: 1m\n    input_series:\n",
            case.name
        ));
        file.push_str(&input_series(case, scraped));
        file.push_str(&alert_tests(case));
    }
    let scratch = Scratch::new();
    let tests = scratch.path("tests.yaml");
    fs::write(&tests, &file).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric name in a PromQL expression (dagsnap's and git-sync's families).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("dagsnap_") || expr[i..].starts_with("git_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            names.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_is_its_code_s_output_and_every_query_parses_and_names_exported_metrics() {
    if !promtool() {
        return;
    }
    let generated = Command::new("python3")
        .arg(kit("dashboard.py"))
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", stderr(&generated));
    let json = fs::read_to_string(kit("dashboard.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&generated.stdout),
        json,
        "dashboard.json is not what dashboard.py writes: run python3 deploy/monitoring/dashboard.py > deploy/monitoring/dashboard.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    // Grafana's variables, as Grafana substitutes them.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$pod", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let scratch = Scratch::new();
    let file = scratch.path("dashboard-queries.yaml");
    fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Only what a publisher exports (the alert rules too).
    let exported: BTreeSet<String> = scraped().keys().map(|s| family(s).to_string()).collect();
    let rules_text = fs::read_to_string(kit("rules.yaml")).unwrap();
    for (what, expr) in exprs
        .iter()
        .map(|e| ("dashboard", e.as_str()))
        .chain(std::iter::once(("rules.yaml", rules_text.as_str())))
    {
        for name in names_in(expr) {
            assert!(
                exported.contains(&name),
                "{what} names {name}, which dagsnap does not export (it exports {exported:?})"
            );
        }
    }
}
