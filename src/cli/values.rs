//! How option values read, for dagsnap's own flags and for the git-sync personality alike.
//!
//! Operators copy values between dagsnap and git-sync configurations, so every duration accepts
//! both notations: Go's (`1m30s`, `1.5h`, `300ms`, `2us`: what git-sync and Kubernetes write)
//! and humantime's (`1m 30s`, `2min`, `1day`). Every boolean accepts what Go's `ParseBool`
//! accepts (`1`, `t`, `true`, `0`, `f`, `false`, in any case) and the words people type in
//! YAML (`yes`, `no`, `on`, `off`).

use std::time::Duration;

/// A duration in Go's or humantime's notation; negative durations are refused.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    match go_duration(trimmed) {
        Some(Ok(duration)) => return Ok(duration),
        Some(Err(why)) => return Err(format!("invalid duration '{text}': {why}")),
        None => {}
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!(
            "invalid duration '{text}' ({e}); use a number with a unit, like 10s, 1m30s or 500ms"
        )
    })
}

/// A duration that must be greater than zero.
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "invalid duration '{text}': must be greater than zero"
        ));
    }
    Ok(duration)
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers, each with an optional fraction
/// and a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), or a bare `0`. `None` when the
/// text is not in that notation at all (humantime may still read it); an error when it is but
/// cannot be a duration here (negative, or too large).
fn go_duration(text: &str) -> Option<Result<Duration, String>> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if body == "0" {
        return Some(Ok(Duration::ZERO));
    }
    if body.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        let mut divisor = 1u128;
        let mut fraction_value = 0u128;
        for digit in fraction.bytes().take(18) {
            fraction_value = fraction_value * 10 + u128::from(digit - b'0');
            divisor *= 10;
        }
        part += fraction_value * scale / divisor;
        nanos = nanos.checked_add(part)?;
    }
    if negative && nanos > 0 {
        return Some(Err("must not be negative".into()));
    }
    let Ok(nanos) = u64::try_from(nanos) else {
        return Some(Err("too large".into()));
    };
    Some(Ok(Duration::from_nanos(nanos)))
}

/// A boolean as Go's `strconv.ParseBool` reads it, plus yes/no/on/off, in any case.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Ok(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "invalid boolean '{text}': use true or false (also 1/0, yes/no, on/off)"
        )),
    }
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it: a sign, then decimal, `0x` hex,
/// `0o` or leading-`0` octal, or `0b` binary, with `_` between digits.
pub(crate) fn parse_go_int(text: &str) -> Result<i64, String> {
    let invalid = || format!("invalid number '{text}'");
    let trimmed = text.trim();
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex.to_string())
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (2, bin.to_string())
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (8, oct.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return Err(invalid());
    }
    let digits = digits.replace('_', "");
    let magnitude = i128::from_str_radix(&digits, radix).map_err(|_| invalid())?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| format!("number '{text}' is out of range"))
}

/// git-sync's `--git-config` syntax, which dagsnap's own `--git-config` reads too:
/// `key:value,key2:value2`. Keys and values may be double-quoted to hold `:` or `,`; within
/// quoted keys and in every value, quoted or not, `\n`, `\t`, `\"`, `\,` and `\\` stand for a
/// newline, a tab, a quote, a comma and a backslash, and any other escape is an error (as
/// git-sync reads it).
pub(crate) fn parse_git_config(text: &str) -> Result<Vec<(String, String)>, String> {
    let bad =
        || format!("invalid --git-config {text:?}: expected key:value pairs separated by commas");
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let key = read_config_part(&mut chars, ':', false).ok_or_else(bad)?;
        if chars.next() != Some(':') || key.is_empty() {
            return Err(bad());
        }
        let value = read_config_part(&mut chars, ',', true).ok_or_else(bad)?;
        pairs.push((key, value));
        match chars.next() {
            Some(',') | None => {}
            Some(_) => return Err(bad()),
        }
    }
    Ok(pairs)
}

/// One key or value of [`parse_git_config`], up to (not including) `stop`; `None` when it is
/// malformed (an unknown escape, an unterminated quote).
fn read_config_part(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    stop: char,
    escapes_unquoted: bool,
) -> Option<String> {
    let escaped = |c: char| match c {
        'n' => Some('\n'),
        't' => Some('\t'),
        '"' | ',' | '\\' => Some(c),
        _ => None,
    };
    let mut out = String::new();
    if chars.peek() == Some(&'"') {
        chars.next();
        loop {
            match chars.next()? {
                '\\' => out.push(escaped(chars.next()?)?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
    }
    while let Some(&c) = chars.peek() {
        if c == stop {
            break;
        }
        chars.next();
        if c == '\\' && escapes_unquoted {
            out.push(escaped(chars.next()?)?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Pairs as [`parse_git_config`] reads them back.
pub(crate) fn format_git_config(pairs: &[(String, String)]) -> String {
    let quote = |s: &str| {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '"' | '\\' | ',' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A signal by name (`HUP`, `SIGUSR1`, in any case) or number.
pub(crate) fn parse_signal(text: &str) -> Result<i32, String> {
    let trimmed = text.trim();
    if let Ok(number) = parse_go_int(trimmed) {
        return i32::try_from(number)
            .ok()
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .map(|s| s as i32)
            .ok_or_else(|| format!("invalid signal '{text}': no such signal number"));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("invalid signal '{text}': use a name like HUP or USR1, or a number"))
}

/// An http(s) URL with a host: a typo fails at start, not at every publish.
pub(super) fn parse_webhook_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("invalid URL: {e} (expected http://host[:port]/path)"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "'{}' is not an http:// or https:// URL with a host",
            crate::git::redact::Redactor::default().redact(text)
        ));
    }
    Ok(text.to_string())
}

/// An HTTP method as servers expect it: an upper-case token (`POST`, `PUT`, `GET`).
pub(super) fn parse_http_method(text: &str) -> Result<String, String> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
    if !valid {
        return Err(format!(
            "invalid method '{text}': use an upper-case HTTP method such as POST, PUT or GET"
        ));
    }
    Ok(text.to_string())
}

/// A number of threads, 1 to 256.
pub(super) fn parse_jobs(text: &str) -> Result<usize, String> {
    match parse_go_int(text) {
        Ok(n) if (1..=256).contains(&n) => Ok(n as usize),
        _ => Err(format!("'{text}' is not a number of threads from 1 to 256")),
    }
}

/// 0 (any answer) or an HTTP status, 100 to 599.
pub(super) fn parse_success_status(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(status) if status == 0 || (100..=599).contains(&status) => Ok(status),
        _ => Err(format!(
            "invalid status '{text}': use an HTTP status (100-599), or 0 to accept any answer"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_go_and_humantime_notation() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("2h45m30.5s", Duration::from_millis(9_930_500)),
            ("300us", Duration::from_micros(300)),
            ("300µs", Duration::from_micros(300)),
            ("15ns", Duration::from_nanos(15)),
            (".5s", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("1m 30s", Duration::from_secs(90)),
            ("2min", Duration::from_secs(120)),
            ("1day", Duration::from_secs(86400)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "10", "10 parsecs", "1.2.3s", "-5s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("10 parsecs")
            .unwrap_err()
            .contains("like 10s"));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0").is_err());
    }

    #[test]
    fn booleans_read_like_go_and_yaml() {
        for yes in ["1", "t", "T", "true", "TRUE", "True", "yes", "on", " true "] {
            assert_eq!(parse_bool(yes), Ok(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "no", "off"] {
            assert_eq!(parse_bool(no), Ok(false), "{no}");
        }
        assert!(parse_bool("maybe").unwrap_err().contains("true or false"));
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn integers_read_like_go_parse_int_base_zero() {
        assert_eq!(parse_go_int("42"), Ok(42));
        assert_eq!(parse_go_int("-1"), Ok(-1));
        assert_eq!(parse_go_int("0x1f"), Ok(31));
        assert_eq!(parse_go_int("010"), Ok(8));
        assert_eq!(parse_go_int("0o10"), Ok(8));
        assert_eq!(parse_go_int("0b101"), Ok(5));
        assert_eq!(parse_go_int("1_000"), Ok(1000));
        assert_eq!(parse_go_int("0"), Ok(0));
        for bad in ["", "1.5", "ten", "0x", "_1", "99999999999999999999"] {
            assert!(parse_go_int(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
