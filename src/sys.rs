//! The operating-system calls securexfer makes through `libc`, each behind a small safe
//! function. Together with the AES-NI code in `crypto::aes`, this is the only place where
//! `unsafe` is allowed, so every such block in the crate can be read in one sitting.
//!
//! Where an OS lacks a call, the function does what its callers already expect there:
//! `O_DIRECT` cannot be turned on, write-behind is skipped, free space is unknown.

use std::fs::File;
use std::path::Path;

/// Turns `O_DIRECT` on or off for `file`; false if the kernel or file system refuses.
#[cfg(target_os = "linux")]
pub(crate) fn set_direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: a valid descriptor; F_GETFL/F_SETFL only read and change its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

/// Turns `O_DIRECT` on or off for `file`: never on here, so only "off" succeeds.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_direct(_file: &File, on: bool) -> bool {
    !on
}

/// Starts writing `(offset, len)` of `file` to disk without waiting.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, (offset, len): (u64, u64)) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the call only schedules I/O on the file's own pages.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits until `(offset, len)` of `file` is written, then drops it from the page cache.
#[cfg(target_os = "linux")]
pub(crate) fn drop_written(file: &File, (offset, len): (u64, u64)) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor; both calls only act on the file's own cached pages.
    unsafe {
        libc::sync_file_range(fd, offset as i64, len as i64, wait);
        libc::posix_fadvise(fd, offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
    }
}

/// Starts writing part of a file to disk without waiting: nothing to do here.
#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _window: (u64, u64)) {}

/// Waits for part of a file to be written and drops it from the cache: nothing to do here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_written(_file: &File, _window: (u64, u64)) {}

/// Bytes available to this process on the file system holding `path`, if the OS says.
#[cfg(unix)]
pub(crate) fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Bytes available on the file system holding a path: unknown here.
#[cfg(not(unix))]
pub(crate) fn available_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Many clients at once need many file descriptors: raises this process's soft limit on
/// open files to the hard one (quietly leaves it as it is where that fails).
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Set by the SIGINT handler that [`catch_interrupt`] installs.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn note_interrupt(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The process's file-mode creation mask (what a new file's mode loses): a download is
/// given the mode a file the user creates would get. It can only be read by setting it,
/// so call it before other threads create files.
pub fn umask() -> u32 {
    #[cfg(unix)]
    // `mode_t` is u32 on Linux and u16 on the BSDs and macOS.
    #[allow(clippy::useless_conversion)]
    // SAFETY: umask only swaps the process's mask, and it is set back at once.
    unsafe {
        let mask = libc::umask(0o077);
        libc::umask(mask);
        u32::from(mask)
    }
    #[cfg(not(unix))]
    0o022
}

/// Makes Ctrl-C (SIGINT) set a flag instead of killing the process, so that a command can
/// tidy its terminal and say what was interrupted; returns the flag.
pub fn catch_interrupt() -> &'static std::sync::atomic::AtomicBool {
    #[cfg(unix)]
    // SAFETY: installs a handler that only stores to an atomic; the sigaction struct is
    // fully initialised (zeroed, then the handler and an empty mask set).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_interrupt as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
    &INTERRUPTED
}

/// Whether the terminal on stdin echoes control characters (`^C`), as Linux terminals do
/// by default; false when stdin is no terminal.
pub fn terminal_echoes_control_chars() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: tcgetattr fills a zeroed termios for descriptor 0 or fails; nothing else.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut termios) == 0 && termios.c_lflag & libc::ECHOCTL != 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The width in columns of the terminal on stdout, if stdout is one and it says (a
/// pseudo-terminal nobody sized says 0).
pub fn stdout_terminal_width() -> Option<usize> {
    #[cfg(unix)]
    // SAFETY: TIOCGWINSZ fills a zeroed winsize for descriptor 1 or fails; nothing else.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        let rc = libc::ioctl(1, libc::TIOCGWINSZ, &mut size);
        (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
    }
    #[cfg(not(unix))]
    None
}

/// The result of a libc call that returns -1 on error.
fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// Opens `name` relative to the directory `dir` with `flags` (and `mode` for a file it
/// creates). With `O_NOFOLLOW` in `flags`, a symbolic link at `name` is never followed.
pub(crate) fn open_at(
    dir: &File,
    name: &std::ffi::CStr,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: openat just returned this descriptor, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Hard-links `from` in the directory `from_dir` as `to` in `to_dir`. A link at `from` is
/// linked itself, never followed.
pub(crate) fn link_at(
    from_dir: &File,
    from: &std::ffi::CStr,
    to_dir: &File,
    to: &std::ffi::CStr,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (a, b) = (from_dir.as_raw_fd(), to_dir.as_raw_fd());
    // SAFETY: valid descriptors and NUL-terminated names; flags 0 follow no link.
    check(unsafe { libc::linkat(a, from.as_ptr(), b, to.as_ptr(), 0) }).map(|_| ())
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, replacing `to` atomically.
pub(crate) fn rename_at(
    from_dir: &File,
    from: &std::ffi::CStr,
    to_dir: &File,
    to: &std::ffi::CStr,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (a, b) = (from_dir.as_raw_fd(), to_dir.as_raw_fd());
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe { libc::renameat(a, from.as_ptr(), b, to.as_ptr()) }).map(|_| ())
}

/// Removes the file `name` from the directory `dir` (a link there is removed itself).
pub(crate) fn unlink_at(dir: &File, name: &std::ffi::CStr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
}

/// Makes the directory `name` in the directory `dir` (a link already at `name` is never
/// followed: the call fails with `AlreadyExists`).
pub(crate) fn mkdir_at(
    dir: &File,
    name: &std::ffi::CStr,
    mode: libc::mode_t,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(|_| ())
}

/// Removes the empty directory `name` from the directory `dir` (`DirectoryNotEmpty`-like
/// `ENOTEMPTY` when it is not empty).
pub(crate) fn rmdir_at(dir: &File, name: &std::ffi::CStr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
}

/// Takes an exclusive advisory lock on `file` without waiting (`flock`); it is held until
/// the file is closed.
pub fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor.
    check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(|_| ())
}

/// Sets the extended attribute `name` of `file` to `value`. File systems without user
/// attributes say so with an error (`ENOTSUP`).
pub fn set_xattr(file: &File, name: &std::ffi::CStr, value: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (fd, data) = (file.as_raw_fd(), value.as_ptr().cast());
    // SAFETY: a valid descriptor, a NUL-terminated name, and `value.len()` bytes at `data`.
    check(unsafe { libc::fsetxattr(fd, name.as_ptr(), data, value.len(), 0) }).map(|_| ())
}

/// The extended attribute `name` of the file at `path` (a link there is not followed):
/// `None` when it has none (or its file system has no attributes), or up to 64 bytes of
/// its value.
pub fn get_xattr(path: &Path, name: &std::ffi::CStr) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut value = [0u8; 64];
    // SAFETY: NUL-terminated path and name, and `value.len()` writable bytes.
    let n = unsafe {
        libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    match check_size(n) {
        Ok(n) => Ok(Some(value[..n].to_vec())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the extended attribute `name` of `file`; one it does not have (or cannot
/// have, on a file system without them) is no error.
pub fn remove_xattr(file: &File, name: &std::ffi::CStr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and a NUL-terminated name.
    match check(unsafe { libc::fremovexattr(file.as_raw_fd(), name.as_ptr()) }) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => Ok(()),
        other => other.map(|_| ()),
    }
}

fn check_size(n: libc::ssize_t) -> std::io::Result<usize> {
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Fixes glibc's threshold above which `malloc` maps memory of its own: `bytes`. Left to
/// itself, glibc raises the threshold to the size of each large block freed (up to
/// 32 MiB), after which the object store's 8 MiB parts come from the heap and their
/// pages stay resident after they are sent; fixed, every such block is unmapped when
/// freed, and the server's RSS follows the parts in flight. Not glibc: nothing to do.
pub fn fix_mmap_threshold(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before the threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::try_from(bytes).unwrap_or(i32::MAX));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn direct_can_always_be_turned_off_and_buffered_writes_then_work() {
        let mut file = tempfile::tempfile().unwrap();
        // Whether O_DIRECT goes on depends on the file system (tmpfs refuses it).
        let _ = set_direct(&file, true);
        assert!(set_direct(&file, false));
        file.write_all(b"written after O_DIRECT went off").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "written after O_DIRECT went off");
    }

    #[test]
    fn write_behind_calls_leave_the_contents_alone() {
        let mut file = tempfile::tempfile().unwrap();
        let data = vec![0x5au8; 64 * 1024];
        file.write_all(&data).unwrap();
        start_writeback(&file, (0, data.len() as u64));
        drop_written(&file, (0, data.len() as u64));
        // A window past the end is harmless too.
        drop_written(&file, (1 << 30, 4096));
        file.rewind().unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[cfg(unix)]
    #[test]
    fn available_bytes_is_known_for_a_directory_and_unknown_for_a_bad_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some());
        assert_eq!(available_bytes(&dir.path().join("missing/below")), None);
        assert_eq!(available_bytes(Path::new("nul\0inside")), None);
    }

    #[cfg(unix)]
    fn open_file_limit() -> libc::rlimit {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit with a valid, writable struct.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        limit
    }

    #[cfg(unix)]
    #[test]
    fn the_open_file_limit_only_goes_up_and_stays_within_the_hard_limit() {
        let before = open_file_limit();
        raise_open_file_limit();
        let after = open_file_limit();
        assert!(after.rlim_cur >= before.rlim_cur);
        assert!(after.rlim_cur <= after.rlim_max);
    }
}
