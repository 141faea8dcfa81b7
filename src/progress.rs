//! Progress of long fetches and checkouts, for people and for log collectors.
//!
//! gix reports progress into a prodash tree. A background thread samples that tree: once an
//! operation has been running for a couple of seconds it prints one overwritten status line on
//! a terminal, or a log line every few seconds otherwise. Short operations (every idle poll,
//! every small update) print nothing.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::progress::prodash::unit::display::Throughput;
use gix::progress::tree;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A status line on stderr, redrawn every second.
    Terminal,
    /// A log event every few seconds.
    Log,
}

/// Owns the progress tree and the thread that reports it; stops the thread when dropped.
pub(crate) struct Reporter {
    tree: Arc<tree::Root>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Operations shorter than this are not worth a progress line.
const QUIET_START: Duration = Duration::from_secs(2);

impl Reporter {
    /// Start reporting: a log line every `interval` (`Style::Log`), or a redrawn status line at
    /// least every second (`Style::Terminal`).
    pub(crate) fn start(style: Style, interval: Duration) -> Reporter {
        let tree = tree::Root::new();
        let stop = Arc::new(AtomicBool::new(false));
        let interval = match style {
            Style::Terminal => interval.min(Duration::from_secs(1)),
            Style::Log => interval,
        };
        let thread = {
            let tree = Arc::clone(&tree);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("dagsnap-progress".into())
                .spawn(move || report_loop(&tree, &stop, style, interval))
                .ok()
        };
        Reporter { tree, stop, thread }
    }

    /// A shared handle on the tree, for work running on another thread.
    pub(crate) fn shared_tree(&self) -> Arc<tree::Root> {
        Arc::clone(&self.tree)
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn report_loop(tree: &tree::Root, stop: &AtomicBool, style: Style, interval: Duration) {
    let mut tasks = Vec::new();
    let mut busy_since: Option<Instant> = None;
    let mut previous: HashMap<String, (usize, Instant)> = HashMap::new();
    let mut line_shown = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(interval);
        tree.sorted_snapshot(&mut tasks);
        let now = Instant::now();
        let active: Vec<_> = tasks
            .iter()
            .filter_map(|(_, task)| task.progress.as_ref().map(|p| (task.name.as_str(), p)))
            .collect();
        if active.is_empty() {
            busy_since = None;
            previous.clear();
            if line_shown && style == Style::Terminal {
                eprint!("\r\x1b[K");
                line_shown = false;
            }
            continue;
        }
        if now.duration_since(*busy_since.get_or_insert(now)) < QUIET_START.min(interval) {
            continue;
        }
        let mut parts = Vec::with_capacity(active.len());
        for (name, value) in active {
            let step = value.step.load(Ordering::Relaxed);
            let throughput = previous.get(name).and_then(|(last, at)| {
                let span = now.duration_since(*at);
                // Shown per second whatever the sampling interval.
                (step >= *last && !span.is_zero()).then(|| {
                    Throughput::new(
                        ((step - last) as f64 / span.as_secs_f64()) as usize,
                        Duration::from_secs(1),
                    )
                })
            });
            previous.insert(name.to_string(), (step, now));
            let shown = match &value.unit {
                Some(unit) => unit.display(step, value.done_at, throughput).to_string(),
                None => step.to_string(),
            };
            parts.push(format!("{name} {shown}"));
        }
        let line = parts.join(" | ");
        match style {
            Style::Terminal => {
                eprint!("\r\x1b[K{line}");
                let _ = std::io::stderr().flush();
                line_shown = true;
            }
            Style::Log => tracing::info!(progress = %line, "in progress"),
        }
    }
    if line_shown {
        eprint!("\r\x1b[K");
    }
}
