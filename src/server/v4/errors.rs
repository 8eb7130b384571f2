//! The `ERROR` frames the server sends, one constructor per situation, so that each
//! refusal has one code, one `closes` and one wording wherever it is decided
//! (docs/protocol-v4.md, "Errors"). Messages are for the user: they never carry server
//! paths or database errors, which go to the log.

use crate::protocol::v4::{ErrorCode, ErrorFrame, ErrorUnit, FrameError, MAX_ERROR_MESSAGE_LEN};

/// How long a client waits before retrying a `busy` or `rate_limited` put at the least.
pub const BUSY_RETRY_MS: u32 = 1000;

/// An `ERROR` with nothing counted.
pub fn plain(code: ErrorCode, closes: bool, message: &str) -> ErrorFrame {
    ErrorFrame {
        code,
        closes,
        unit: ErrorUnit::Nothing,
        retry_after_ms: 0,
        value: 0,
        limit: 0,
        message: clean(message),
    }
}

/// A message the codec will send: no control characters, at most the limit (cut on a
/// character boundary).
fn clean(message: &str) -> String {
    let mut text: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.len() > MAX_ERROR_MESSAGE_LEN {
        let mut end = MAX_ERROR_MESSAGE_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `protocol`, closing: a frame not allowed here.
pub fn protocol(why: &str) -> ErrorFrame {
    plain(ErrorCode::Protocol, true, &format!("protocol error: {why}"))
}

/// `protocol`, closing: a frame that does not decode.
pub fn malformed(e: &FrameError) -> ErrorFrame {
    protocol(&format!("malformed frame: {e}"))
}

/// `version`, closing: a major version other than 4.
pub fn version(major: u8) -> ErrorFrame {
    plain(
        ErrorCode::Version,
        true,
        &format!("protocol {major} is not served here; this server speaks protocol 4.0"),
    )
}

/// `not_registered`: the key is not a client here.
pub fn not_registered() -> ErrorFrame {
    plain(
        ErrorCode::NotRegistered,
        false,
        "this key is not a client of this server: register or upgrade first",
    )
}

/// `not_registered`, closing: 60 s after `WELCOME` without a registered key.
pub fn unregistered_too_long() -> ErrorFrame {
    plain(ErrorCode::NotRegistered, true, "no registration or upgrade within 60 seconds of WELCOME")
}

/// `conflict`: `REGISTER` or `UPGRADE` from a key that is already a client.
pub fn already_registered() -> ErrorFrame {
    plain(ErrorCode::Conflict, false, "this key is already a client of this server")
}

/// `not_authorised`, the one answer to every `UPGRADE` refused before its signature
/// verified, so that it tells a stranger nothing about which ids exist.
pub fn upgrade_refused() -> ErrorFrame {
    plain(ErrorCode::NotAuthorised, false, "the upgrade proof was refused")
}

/// `not_authorised`: the registration policy or the token refuses a `REGISTER`.
pub fn registration_refused(why: &str) -> ErrorFrame {
    plain(ErrorCode::NotAuthorised, false, why)
}

/// `rate_limited`: the address's registrations per minute are used up.
pub fn rate_limited(wait_ms: u32) -> ErrorFrame {
    ErrorFrame {
        retry_after_ms: wait_ms.max(1),
        ..plain(
            ErrorCode::RateLimited,
            false,
            "too many registrations from this address; try again later",
        )
    }
}

/// `busy`: `--max-uploads` or the open-put caps are reached.
pub fn busy(why: &str) -> ErrorFrame {
    ErrorFrame { retry_after_ms: BUSY_RETRY_MS, ..plain(ErrorCode::Busy, false, why) }
}

/// `too_large`: a size above `--max-file-size`.
pub fn too_large(size: u64, max: u64) -> ErrorFrame {
    ErrorFrame {
        unit: ErrorUnit::Bytes,
        value: size,
        limit: max,
        ..plain(
            ErrorCode::TooLarge,
            false,
            &format!("the file is {size} bytes; this server takes at most {max}"),
        )
    }
}

/// `quota_exceeded`: the put would take the client past its quota (`db quota`); `used` is
/// what it has, `limit` the quota, in `unit` (bytes or files).
pub fn quota_exceeded(unit: ErrorUnit, used: u64, limit: u64, message: &str) -> ErrorFrame {
    ErrorFrame { unit, value: used, limit, ..plain(ErrorCode::QuotaExceeded, false, message) }
}

/// `disk_full`: the upload would eat into the server's disk reserve.
pub fn disk_full(size: u64, available: u64) -> ErrorFrame {
    ErrorFrame {
        unit: ErrorUnit::Bytes,
        value: size,
        limit: available,
        retry_after_ms: BUSY_RETRY_MS,
        ..plain(ErrorCode::DiskFull, false, "the server's disk is full")
    }
}

/// `timeout`, closing.
pub fn timeout(why: &str) -> ErrorFrame {
    plain(ErrorCode::Timeout, true, why)
}

/// `shutting_down`, closing.
pub fn shutting_down() -> ErrorFrame {
    ErrorFrame {
        retry_after_ms: BUSY_RETRY_MS,
        ..plain(ErrorCode::ShuttingDown, true, "the server is stopping")
    }
}

/// `internal`: the server failed; `at` (seconds since 1970) lets the operator find the
/// log line.
pub fn internal(at: i64) -> ErrorFrame {
    plain(
        ErrorCode::Internal,
        false,
        &format!("the server failed (logged at {at}, seconds since 1970)"),
    )
}

/// `internal`, for an upload whose content the storage failed to take (an object store
/// that answered with an error, a full disk under it): said apart from other failures,
/// since the cure is the operator's storage, and the client can tell its user so.
pub fn storage_failed(at: i64) -> ErrorFrame {
    plain(
        ErrorCode::Internal,
        false,
        &format!(
            "the server could not store the upload: its storage failed (logged at {at}, \
             seconds since 1970)"
        ),
    )
}

/// `name_refused`: a path that breaks the rules; the message names the rule.
pub fn path_refused(why: &str) -> ErrorFrame {
    plain(ErrorCode::NameRefused, false, &format!("path refused: {why}"))
}

/// `not_found`: nothing is stored at the path (of this client: others' files are never
/// named, so this says nothing about them).
pub fn not_found(path: &str) -> ErrorFrame {
    plain(ErrorCode::NotFound, false, &format!("no file is stored at {path:?}"))
}

/// `is_folder`: `GET`, or `RM` without `recursive`, of a folder.
pub fn is_folder(path: &str) -> ErrorFrame {
    plain(ErrorCode::IsFolder, false, &format!("{path:?} is a folder, not a file"))
}

/// `conflict`: a resumed `GET` whose copy changed, or whose offset is past its size.
pub fn copy_changed(why: &str) -> ErrorFrame {
    plain(ErrorCode::Conflict, false, &format!("{why}: download it again from the start"))
}

/// `corrupt`: the stored bytes are not what the records say; the operator must look.
pub fn corrupt(path: &str, why: &str) -> ErrorFrame {
    plain(
        ErrorCode::Corrupt,
        false,
        &format!(
            "the stored copy of {path:?} is damaged ({why}); the server's operator should run \
             `securexfer db verify` and restore it"
        ),
    )
}
