//! Log output: readable text on a terminal, one JSON object per line in a container.
//!
//! Log lines quote text that others chose (commit subjects, paths in the repository, ref
//! names, what a server said). In text format every control character is escaped on its way
//! out ([`EscapingWriter`]), so a log line is one inert line on any terminal; JSON escapes them
//! by itself. Text logs are therefore never colored: an escape sequence in a log line is always
//! someone else's.

use std::io::{IsTerminal, Write};

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
        .with_target(false);
    let installed = if json {
        builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_writer(|| EscapingWriter(std::io::stderr()))
            .with_ansi(false)
            .try_init()
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(if on_terminal && !json {
        Style::Terminal
    } else {
        Style::Log
    })
}

/// Writes each log line with its control characters escaped (see [`crate::text::escape`]),
/// except the newline that ends it. The formatter hands over one whole line per write.
pub(crate) struct EscapingWriter<W: Write>(pub W);

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (line, end) = match buf.strip_suffix(b"\n") {
            Some(line) => (line, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let mut out = crate::text::escape_bytes(line).into_bytes();
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_is_one_inert_line() {
        let mut out = Vec::new();
        EscapingWriter(&mut out)
            .write_all(b"ERROR invalid ref 'a\x1b[2Jb\rfake' caf\xc3\xa9\n")
            .unwrap();
        assert_eq!(
            out,
            b"ERROR invalid ref 'a\\u{1b}[2Jb\\rfake' caf\xc3\xa9\n"
        );
    }
}
