//! Console logging for early boot: one line per event, prefixed with the program name,
//! written straight to the console so it reaches the serial port even if nothing else works.

use std::io::Write;

pub fn line(program: &str, message: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    // Nothing sensible to do if the console is gone; never panic over it.
    let _ = writeln!(out, "{program}: {message}");
    let _ = out.flush();
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(env!("CARGO_BIN_NAME"), format_args!($($arg)*)) };
}
