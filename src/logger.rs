//! The binary's logger behind the `log` facade the library writes to: plain lines on stderr,
//! `warning:`/`error:` prefixed like the command line's own messages, filtered by `-v`/`--quiet`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prefix = match r.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug | Level::Trace => "debug: ",
        };
        // One write per line so lines from several threads do not interleave.
        let _ = writeln!(std::io::stderr().lock(), "{prefix}{}", r.args());
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Installs the logger: warnings, errors and progress by default; `quiet` keeps errors only;
/// each `verbose` step adds a level (debug, then trace).
pub fn init(verbose: u8, quiet: bool) {
    let level = if quiet {
        LevelFilter::Error
    } else {
        match verbose {
            0 => LevelFilter::Info,
            1 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
