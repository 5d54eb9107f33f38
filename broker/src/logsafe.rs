//! Log lines that a peer cannot forge. Interface names, error messages and
//! other strings in the log may come from peers; a newline in one would start
//! what looks like a new log line (journald stores it as a separate entry),
//! and terminal escapes could rewrite what an operator sees. Every log event
//! is written through [`EscapingWriter`], which escapes control characters in
//! the whole formatted event, whatever the format and whichever field carried
//! them; the JSON format escapes them already, so there it changes nothing.

use std::io::{self, Write};

/// Escape the control characters of one formatted event: every byte below
/// 0x20 but tab, and DEL, becomes `\n`, `\r` or `\xNN`; one newline at the
/// very end (the event's terminator) is kept.
pub fn escape_event(event: &[u8]) -> Vec<u8> {
    let (body, terminator) = match event.split_last() {
        Some((b'\n', body)) => (body, true),
        _ => (event, false),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    if terminator {
        out.push(b'\n');
    }
    out
}

/// Standard error, one escaped event per write (tracing-subscriber formats an
/// event into one buffer and hands it over in one `write_all`).
pub struct EscapingWriter;

impl Write for EscapingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&escape_event(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Make an [`EscapingWriter`] per event.
pub fn stderr() -> EscapingWriter {
    EscapingWriter
}

#[cfg(test)]
mod tests {
    use super::escape_event;

    #[test]
    fn a_forged_line_stays_on_its_line() {
        let forged = b"refused: interface \"x\ngranted ifname=eth0 uid=0\" not found\n";
        let out = escape_event(forged);
        assert_eq!(
            out,
            b"refused: interface \"x\\ngranted ifname=eth0 uid=0\" not found\n".to_vec()
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn terminal_escapes_and_carriage_returns_are_shown_not_obeyed() {
        assert_eq!(
            escape_event(b"a\x1b[2Jb\rc\x7f\td"),
            b"a\\x1b[2Jb\\rc\\x7f\td".to_vec()
        );
    }

    #[test]
    fn plain_text_and_utf8_are_unchanged() {
        let s = "granted ifname=eth0 queues=[0, 1] — ok\n".as_bytes();
        assert_eq!(escape_event(s), s.to_vec());
    }
}
