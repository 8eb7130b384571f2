//! Standard output, for people and scripts. A reader that goes away (`securexfer send … |
//! head -1`) is not an error: what would have been printed is dropped and the command
//! finishes its work, exiting with the code that work earns. (`send` must not stop halfway
//! through a batch because nobody reads its report; a listing just ends sooner.)

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Prints one line on stdout and flushes it; silently nothing once stdout is closed.
pub fn line(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    let written =
        out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    if written.is_err() {
        // A closed pipe, or stdout gone some other way: nobody can read it either way.
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` that survives a closed stdout (see the module docs).
macro_rules! outln {
    () => { $crate::cmd::out::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cmd::out::line(format_args!($($arg)*)) };
}
pub(crate) use outln;
