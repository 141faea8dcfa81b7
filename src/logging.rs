//! Log output: readable text on a terminal, one JSON object per line in a container.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::progress::Style;

/// Install the global subscriber. Logs go to stderr; stdout is reserved for command output
/// (`status --json`) so that it stays machine-readable.
pub fn init(format: LogFormat, level: &str) -> Result<Style, String> {
    // A bare level applies to dagsnap's own events; libraries (rustls, gix) report through
    // dagsnap's errors, which say what to do. A full filter ("dagsnap=debug,gix=trace") is
    // taken as written.
    let directive = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("dagsnap={level}")
    };
    let filter = EnvFilter::try_new(&directive).map_err(|e| {
        format!("invalid --log-level '{level}': {e}; use error, warn, info, debug or trace")
    })?;
    let on_terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !on_terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(on_terminal).try_init()
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(if on_terminal && !json {
        Style::Terminal
    } else {
        Style::Log
    })
}
