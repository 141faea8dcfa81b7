//! The translation as a `sync` command line ([`Translation::argv`]): what clap parses, so that
//! dagsnap's own checks and its `DAGSNAP_*` defaults apply to what git-sync's configuration
//! leaves unsaid, exactly as for a `sync` typed by hand.

use std::ffi::OsString;
use std::time::Duration;

use super::translate::Translation;
use crate::cli::values::format_git_config;

impl Translation {
    /// dagsnap's `sync` command line for this translation: what clap parses, so that
    /// dagsnap's own checks and `DAGSNAP_*` defaults apply to the rest.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = Argv(vec!["dagsnap".into(), "sync".into()]);
        let Translation {
            repository: r,
            timing: t,
            files: f,
            hooks: h,
            credentials: c,
            serving: v,
        } = self;
        argv.opt("root", &r.root);
        argv.opt("repo", &r.repo);
        argv.opt_maybe("ref", r.git_ref.as_deref());
        argv.opt("depth", &r.depth.to_string());
        argv.opt("submodules", &r.submodules);
        argv.opt_maybe("sparse-checkout-file", r.sparse_checkout_file.as_deref());
        argv.opt("link", &r.link);
        argv.opt("period", &go_duration(t.period));
        argv.opt_maybe("init-period", t.init_period.map(go_duration).as_deref());
        argv.opt_maybe("sync-on-signal", t.sync_on_signal.as_deref());
        argv.opt("sync-timeout", &go_duration(t.sync_timeout));
        argv.flag_if("one-time", t.one_time);
        argv.opt("max-failures", &t.max_failures.to_string());
        argv.opt_maybe(
            "init-max-failures",
            t.init_max_failures.map(|n| n.to_string()).as_deref(),
        );
        argv.opt_maybe("touch-file", f.touch_file.as_deref());
        argv.opt_maybe("error-file", f.error_file.as_deref());
        argv.flag_if("group-write", f.group_write);
        argv.opt_maybe("grace", f.grace.map(go_duration).as_deref());
        if let Some(hook) = &h.exechook {
            argv.opt("exechook-command", &hook.command);
            argv.opt("exechook-timeout", &go_duration(hook.timeout));
            argv.opt("exechook-backoff", &go_duration(hook.backoff));
        }
        if let Some((command, timeout)) = &h.check {
            argv.opt("check-command", command);
            argv.opt("check-timeout", &go_duration(*timeout));
        }
        if let Some(webhook) = &h.webhook {
            argv.opt("webhook-url", &webhook.url);
            argv.opt("webhook-method", &webhook.method);
            argv.opt(
                "webhook-success-status",
                &webhook.success_status.to_string(),
            );
            argv.opt("webhook-timeout", &go_duration(webhook.timeout));
            argv.opt("webhook-backoff", &go_duration(webhook.backoff));
        }
        argv.opt_maybe("username", c.username.as_deref());
        argv.opt_maybe("password-file", c.password_file.as_deref());
        for key in &c.ssh_key_files {
            argv.opt("ssh-key-file", key);
        }
        if let Some((check, file)) = &c.ssh_known_hosts {
            argv.opt("ssh-known-hosts", if *check { "true" } else { "false" });
            argv.opt_maybe("ssh-known-hosts-file", file.as_deref());
        }
        argv.opt_maybe("ca-file", c.ca_file.as_deref());
        argv.flag_if("allow-insecure-http-credentials", c.allow_insecure_http);
        let o = &c.other;
        argv.opt_maybe("cookie-file", o.cookie_file.as_deref());
        argv.opt_maybe("askpass-url", o.askpass_url.as_deref());
        argv.opt_maybe(
            "github-app-private-key-file",
            o.github_app_key_file.as_deref(),
        );
        argv.opt_maybe("github-app-client-id", o.github_app_client_id.as_deref());
        if let Some(id) = o.github_app_application_id {
            argv.opt("github-app-application-id", &id.to_string());
        }
        if let Some(id) = o.github_app_installation_id {
            argv.opt("github-app-installation-id", &id.to_string());
        }
        argv.opt_maybe("github-base-url", o.github_base_url.as_deref());
        if !c.git_config.is_empty() {
            argv.opt("git-config", &format_git_config(&c.git_config));
        }
        argv.opt_maybe("http-bind", v.http_bind.as_deref());
        argv.opt_maybe("log-level", v.log_level);
        argv.flag_if("adopt-git-sync", true);
        argv.0
    }
}

/// A command line being written.
struct Argv(Vec<OsString>);

impl Argv {
    fn opt(&mut self, name: &str, value: &str) {
        self.0.push(format!("--{name}").into());
        self.0.push(value.into());
    }

    fn opt_maybe(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.opt(name, value);
        }
    }

    fn flag_if(&mut self, name: &str, on: bool) {
        if on {
            self.0.push(format!("--{name}").into());
        }
    }
}

/// git-sync's failure count (exit when the failures in a row reach N; 0 and 1 both exit on
/// the first) as dagsnap's (the failures tolerated).
/// A duration in a notation dagsnap reads back exactly.
fn go_duration(d: Duration) -> String {
    format!("{}ns", d.as_nanos())
}
