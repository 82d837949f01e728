//! How results look: human tables and sizes, or JSON.

use std::io::{self, IsTerminal, Write};

use serde::Serialize;

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// JSON mode.
    pub json: bool,
    /// Only errors.
    pub quiet: bool,
    /// ANSI colour allowed.
    pub color: bool,
}

impl Out {
    /// Settings from the flags and the terminal.
    pub fn new(json: bool, quiet: bool) -> Out {
        let color = !json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out { json, quiet, color }
    }

    /// Prints `value` as JSON in JSON mode, else runs `human`.
    pub fn show<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)
        } else if self.quiet {
            Ok(())
        } else {
            write!(stdout, "{}", human())
        }
    }

    /// Colours a state word.
    pub fn state(&self, s: &str) -> String {
        if !self.color {
            return s.to_string();
        }
        let code = match s {
            "available" | "written" | "done" | "healthy" => "32",
            "degraded" | "pending" | "queued" | "running" => "33",
            "failed" | "down" => "31",
            _ => return s.to_string(),
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }
}

/// 1536 -> "1.5 KiB".
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds as "850 ms", "12.3 s", "4 min 05 s".
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else {
        format!("{} min {:02} s", secs as u64 / 60, secs as u64 % 60)
    }
}

/// Bytes per second as "812.4 MiB/s".
pub fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", size((bytes as f64 / secs) as u64))
}

/// Unix seconds as RFC 3339, or "-".
pub fn time(t: Option<i64>) -> String {
    t.map(geosnap_catalog::clock::format_rfc3339)
        .unwrap_or_else(|| "-".into())
}

/// A plain text table with left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(c));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(&c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - visible_len(&c) + 2));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(rate(1 << 20, 0.5), "2.0 MiB/s");
    }

    #[test]
    fn tables_align_ignoring_colour_codes() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["\x1b[32mxyz\x1b[0m".into(), "1".into()],
                vec!["q".into(), "2".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a    bb");
        assert_eq!(lines[2], "q    2");
    }
}
