//! What `send` shows while it works: on a terminal, the run as a whole (file k of n, the
//! run's bytes, rate, ETA) above the current file, in binary units throughout (the summary
//! lines use the same), with bars that take what the terminal's width leaves; and, on
//! Ctrl-C, one line saying what was interrupted (exit 130).

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The exit code after Ctrl-C, as shells report a SIGINT death.
pub const INTERRUPTED: u8 = 130;

/// The run's display and what is known about the run, shared with the client's events and
/// the Ctrl-C watcher.
pub struct Display {
    bars: Option<Bars>,
    files: usize,
    current: Option<(usize, String)>,
    verified: usize,
    done_bytes: u64,
    /// What an interruption leaves on the server, when it keeps something to resume.
    kept: Option<String>,
    /// With several connections (`send --parallel`): the bytes of each one's current send.
    lanes: Vec<u64>,
}

/// The two bars, made once: removing bars from a `MultiProgress` between prints leaves
/// stale lines on the terminal.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    file: ProgressBar,
}

/// A [`Display`] behind a lock.
pub type Shared = Arc<Mutex<Display>>;

/// Locks the display (a panic elsewhere leaves plain data).
pub fn lock(display: &Shared) -> MutexGuard<'_, Display> {
    display.lock().unwrap_or_else(|p| p.into_inner())
}

impl Display {
    /// A display for `files` files of `total_bytes` bytes on the wire; bars only when
    /// `bars` (stderr is a terminal and nobody asked for quiet or JSON).
    pub fn new(files: usize, total_bytes: u64, bars: bool) -> Shared {
        let bars = bars.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(total_bytes));
            total.set_style(style(
                "{prefix} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
            ));
            let file = multi.add(ProgressBar::new(0));
            file.set_style(style("  {wide_msg} {percent:>3}%"));
            Bars { multi, total, file }
        });
        let display = Display {
            bars,
            files,
            current: None,
            verified: 0,
            done_bytes: 0,
            kept: None,
            lanes: Vec::new(),
        };
        Arc::new(Mutex::new(display))
    }

    /// Says, on an interruption, that the server keeps what it received of a large file
    /// for `window` seconds (protocol 4's `--resume-window`), so the same send resumes it.
    pub fn keeps_unfinished(&mut self, window: u32, from: u64) {
        if window > 0 {
            let hours = f64::from(window) / 3600.0;
            self.kept = Some(format!(
                "the server keeps what it received of a file of {} or more for {hours:.1} h: run \
                 the same send again to resume it",
                HumanBytes(from)
            ));
        }
    }

    /// File `k` (1-based) named `name` begins.
    pub fn start_file(&mut self, k: usize, name: &str) {
        self.current = Some((k, name.to_owned()));
        if let Some(bars) = &self.bars {
            bars.total.set_prefix(format!("file {k}/{}", self.files));
        }
    }

    /// A send of the current file begins (`attempt` 1..=4), `bytes` on the wire.
    pub fn start_send(&mut self, bytes: u64, attempt: u32) {
        let Some(bars) = self.bars.as_ref() else { return };
        let label = self.current.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
        bars.file.reset();
        bars.file.set_length(bytes);
        bars.file.set_message(if attempt > 1 {
            format!("{label} (send {attempt})")
        } else {
            label
        });
        bars.total.set_position(self.done_bytes);
    }

    /// `n` bytes of the current send are on the wire.
    pub fn progress(&self, n: u64) {
        if let Some(bars) = &self.bars {
            bars.file.set_position(n);
            bars.total.set_position(self.done_bytes + n);
        }
    }

    /// `n` bytes of the current send of connection `lane` are on the wire (several sends
    /// at once: the total is what is done plus every lane's part).
    pub fn lane_progress(&mut self, lane: usize, n: u64) {
        if self.lanes.len() <= lane {
            self.lanes.resize(lane + 1, 0);
        }
        self.lanes[lane] = n;
        if let Some(bars) = &self.bars {
            let busy: u64 = self.lanes.iter().sum();
            bars.total.set_position(self.done_bytes + busy);
        }
    }

    /// Connection `lane`'s current file is done: as [`Display::finish_file`], its part
    /// moved from the lane to what is done.
    pub fn finish_lane(&mut self, lane: usize, bytes: u64, verified: bool) {
        if let Some(part) = self.lanes.get_mut(lane) {
            *part = 0;
        }
        self.finish_file(bytes, verified);
        self.lane_progress(lane, 0);
    }

    /// The run turned out `bytes` larger (a download's size is known from its first frame).
    pub fn grow_total(&self, bytes: u64) {
        if let Some(bars) = &self.bars {
            bars.total.inc_length(bytes);
        }
    }

    /// The current file is done (`bytes` on the wire for one send), verified or not.
    pub fn finish_file(&mut self, bytes: u64, verified: bool) {
        self.done_bytes += bytes;
        self.verified += usize::from(verified);
        self.current = None;
        if let Some(bars) = &self.bars {
            bars.total.set_position(self.done_bytes);
        }
    }

    /// Prints a line on stderr, above the bars when they show.
    pub fn say(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Runs `f` (which prints) with the bars hidden for a moment.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bars {
            Some(bars) => bars.multi.suspend(f),
            None => f(),
        }
    }

    /// Takes the bars off the terminal after Ctrl-C. The bars fill the terminal's width,
    /// so the cursor waits to wrap after the last one, and the `^C` the terminal echoes
    /// (unless echoing control characters is off) opened a line below them: that line is
    /// cleared and left first.
    pub fn clear_after_interrupt(&mut self) {
        if self.bars.is_some() && securexfer::sys::terminal_echoes_control_chars() {
            eprint!("\r\x1b[2K\x1b[1A");
        }
        self.clear();
    }

    /// Takes the bars off the terminal.
    pub fn clear(&mut self) {
        if let Some(bars) = self.bars.take() {
            // Clear the lines first, then keep the bars from drawing again (finishing a bar
            // would redraw the others and leave a line behind).
            let _ = bars.multi.clear();
            bars.multi.set_draw_target(ProgressDrawTarget::hidden());
            bars.file.finish_and_clear();
            bars.total.finish_and_clear();
        }
    }

    /// What Ctrl-C interrupted, in one line.
    fn interrupted(&self) -> String {
        let done = format!("{} of {} verified", self.verified, self.files);
        match &self.current {
            Some((k, name)) => format!(
                "securexfer: interrupted while sending {name} (file {k} of {}); {done}; {}",
                self.files,
                self.kept.as_deref().unwrap_or("the server keeps nothing of an unconfirmed upload")
            ),
            None => format!("securexfer: interrupted; {done}"),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
}

/// A rate in the bars' units.
pub fn rate(bytes: u64, seconds: f64) -> String {
    format!("{}/s", HumanBytes((bytes as f64 / seconds.max(1e-9)) as u64))
}

/// On Ctrl-C: clears the bars, says what was interrupted, exits 130. (A watcher thread
/// polls the flag the signal handler sets; nothing else is safe in a handler.)
pub fn exit_on_interrupt(display: &Shared) {
    let flag: &'static AtomicBool = securexfer::sys::catch_interrupt();
    let display = Arc::clone(display);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if flag.load(Ordering::SeqCst) {
                let mut display = lock(&display);
                display.clear_after_interrupt();
                eprintln!("{}", display.interrupted());
                std::process::exit(i32::from(INTERRUPTED));
            }
        }
    });
}
