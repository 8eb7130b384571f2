//! What the server counts for `serve --metrics`: the names, help texts and labels of every
//! metric, registered in one place, and the Prometheus text they are read as.
//!
//! The counters are always kept (each is an atomic add); only the endpoint that exposes
//! them ([`endpoint`]) is optional. Labels take a few fixed values each (request codes,
//! [`Reason`]s, [`UploadOutcome`]s), never client ids, names or addresses, so the number of
//! series stays small however many clients there are.

pub(crate) mod endpoint;

use crate::protocol::v4::ErrorCode;
use crate::protocol::{RequestCode, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Every metric's name starts with this.
pub const PREFIX: &str = "securexfer";

/// Upper bounds (seconds) of the upload duration buckets: from a small file on a LAN to a
/// 4 GiB file on a slow line (the minimum upload rate allows about 18 hours for 4 GiB).
const UPLOAD_BUCKETS: [f64; 12] =
    [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0];

/// Upper bounds (seconds) of the database call buckets: a call takes well under a
/// millisecond when the database thread is free, and waits behind others when it is not.
const DB_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 2.5];

/// An enum of label values: each variant with its doc and its value, and `ALL` made from
/// the same list, so that every value is exposed (at zero) from the start and none can be
/// forgotten.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub(crate) const ALL: [$name; [$($value),+].len()] = [$($name::$variant),+];

            /// The label value.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }
    };
}

label_values! {
    /// Why a request was answered 2107: a label value.
    Reason {
        /// The header or payload did not decode.
        Malformed = "malformed",
        /// The client id is not on record.
        UnknownClient = "unknown_client",
        /// No usable key exchange for the client here (none, another client's, or ended).
        NoSession = "no_session",
        /// A 1026 that may not set this key, or a name that is not the client's.
        KeyNotAllowed = "key_not_allowed",
        /// A public key that cannot be used, or the AES key could not be encrypted to it.
        BadPublicKey = "bad_public_key",
        /// The address made too many registrations.
        RateLimited = "rate_limited",
        /// A 1025 under `--registration token` or `closed`.
        RegistrationClosed = "registration_closed",
        /// Padding failures hold this client's or address's key exchanges back.
        Backoff = "backoff",
        /// Content that did not decrypt under the session key.
        BadPadding = "bad_padding",
        /// A 1028 with impossible sizes or a name that cannot be stored.
        BadFileRequest = "bad_file_request",
        /// The client has too many uploads waiting for a verdict.
        Quota = "quota",
        /// Not enough free space beyond the disk reserve.
        DiskFull = "disk_full",
        /// `--max-uploads` uploads are already arriving.
        MaxUploads = "max_uploads",
        /// The content did not arrive (connection lost, silence, below the minimum rate).
        UploadFailed = "upload_failed",
        /// A 1029, 1030 or 1031 for a file no upload waits for.
        NoPendingUpload = "no_pending_upload",
        /// The storage directory failed.
        Storage = "storage",
        /// The database or a task failed.
        Internal = "internal",
    }
}

label_values! {
    /// Why the server closed a connection unasked: a label value.
    CloseReason {
        /// The address holds its `--max-connections-per-address`: closed at once.
        PerAddressCap = "per_address_cap",
        /// Closed to make room when the server was full.
        Evicted = "evicted",
        /// No key exchange within the keyless lifetime.
        KeylessLifetime = "keyless_lifetime",
    }
}

label_values! {
    /// How an upload ended: a label value.
    UploadOutcome {
        /// Confirmed with 1029 and stored.
        Verified = "verified",
        /// The client's checksum differed (1030): it sends again.
        Mismatch = "mismatch",
        /// The client gave up (1031).
        GivenUp = "given_up",
        /// The content did not arrive whole, or did not decrypt.
        Failed = "failed",
    }
}

label_values! {
    /// How a protocol-4 download ended: a label value.
    DownloadOutcome {
        /// `GET_END` sent: the whole copy went out, its hash as recorded.
        Sent = "sent",
        /// The copy did not match its record (`corrupt` in place of `GET_END`).
        Corrupt = "corrupt",
        /// Reading the copy failed (`internal`).
        Failed = "failed",
    }
}

/// The outcomes of a request, as labelled.
const REQUEST_OUTCOMES: [&str; 4] = ["ok", "denied", "refused", "malformed"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    code: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    connections_open: Gauge,
    connections_accepted: Counter,
    connections_refused: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    v4_errors: Family<CodeLabel, Counter>,
    received_bytes: Counter,
    uploads: Family<OutcomeLabel, Counter>,
    resumed_uploads: Counter,
    resumed_bytes: Counter,
    upload_duration: Histogram,
    downloads: Family<OutcomeLabel, Counter>,
    sent_bytes: Counter,
    resumed_downloads: Counter,
    sessions: Gauge,
    storage_free: Gauge,
    db_duration: Histogram,
}

impl Metrics {
    /// Every metric, registered at zero.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            requests: Family::default(),
            refusals: Family::default(),
            v4_errors: Family::default(),
            received_bytes: Counter::default(),
            uploads: Family::default(),
            resumed_uploads: Counter::default(),
            resumed_bytes: Counter::default(),
            upload_duration: Histogram::new(UPLOAD_BUCKETS),
            downloads: Family::default(),
            sent_bytes: Counter::default(),
            resumed_downloads: Counter::default(),
            sessions: Gauge::default(),
            storage_free: Gauge::default(),
            db_duration: Histogram::new(DB_BUCKETS),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Client connections open",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections the server closed unasked, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "requests",
            "Requests by code (unknown: not a protocol-3 code) and outcome (ok, denied: 2101 \
             or 2106, refused: 2107, malformed: did not decode)",
            m.requests.clone(),
        );
        registry.register("refusals", "Requests answered 2107, by reason", m.refusals.clone());
        registry.register(
            "v4_errors",
            "Protocol-4 ERROR frames sent, by code name (quota_exceeded, name_refused, …)",
            m.v4_errors.clone(),
        );
        registry.register_with_unit(
            "received",
            "Bytes read from client connections (headers and encrypted content)",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        registry.register(
            "uploads",
            "Uploads by outcome (verified, mismatch: 1030, given_up: 1031, failed: content \
             not received or not decrypted)",
            m.uploads.clone(),
        );
        registry.register(
            "resumed_uploads",
            "Protocol-4 uploads continued from an unfinished upload the server kept",
            m.resumed_uploads.clone(),
        );
        registry.register_with_unit(
            "resumed",
            "Bytes of resumed protocol-4 uploads the client did not have to send again",
            Unit::Bytes,
            m.resumed_bytes.clone(),
        );
        registry.register_with_unit(
            "upload_duration",
            "Time from a 1028's header to its last content byte, for uploads received whole",
            Unit::Seconds,
            m.upload_duration.clone(),
        );
        registry.register(
            "downloads",
            "Protocol-4 downloads by outcome (sent: GET_END went out; corrupt: the copy did \
             not match its record; failed: it could not be read)",
            m.downloads.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Bytes of file content sent in protocol-4 downloads (DATA payloads)",
            Unit::Bytes,
            m.sent_bytes.clone(),
        );
        registry.register(
            "resumed_downloads",
            "Protocol-4 downloads that continued a client's partial file (GET with an offset)",
            m.resumed_downloads.clone(),
        );
        registry.register(
            "sessions",
            "Key exchanges whose AES key is still usable (on a connection or within the \
             session window)",
            m.sessions.clone(),
        );
        registry.register_with_unit(
            "storage_free",
            "Bytes available on the storage directory's file system (at the scrape)",
            Unit::Bytes,
            m.storage_free.clone(),
        );
        registry.register_with_unit(
            "db_duration",
            "Time of one records call, its wait for the database thread included",
            Unit::Seconds,
            m.db_duration.clone(),
        );
        m.start_at_zero();
        Metrics { registry, ..m }
    }

    /// Creates every labelled series at zero, so that a scrape shows them all (and rates
    /// work) before the first event of each kind.
    fn start_at_zero(&self) {
        for reason in CloseReason::ALL {
            let _ =
                self.connections_refused.get_or_create(&ReasonLabel { reason: reason.as_str() });
        }
        for reason in Reason::ALL {
            let _ = self.refusals.get_or_create(&ReasonLabel { reason: reason.as_str() });
        }
        for code in ErrorCode::ALL {
            let _ = self.v4_errors.get_or_create(&CodeLabel { code: code.name() });
        }
        for outcome in UploadOutcome::ALL {
            let _ = self.uploads.get_or_create(&OutcomeLabel { outcome: outcome.as_str() });
        }
        for outcome in DownloadOutcome::ALL {
            let _ = self.downloads.get_or_create(&OutcomeLabel { outcome: outcome.as_str() });
        }
        let codes = RequestCode::ALL.iter().map(|c| c.as_u16().to_string());
        for code in codes.chain(["unknown".to_owned()]) {
            for outcome in REQUEST_OUTCOMES {
                let _ = self.requests.get_or_create(&RequestLabels { code: code.clone(), outcome });
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4), with the free space measured now.
    pub(crate) fn render(&self, storage_free: Option<u64>) -> String {
        if let Some(free) = storage_free {
            self.storage_free.set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A connection was accepted; it counts as open while the guard lives.
    pub(crate) fn connection_opened(&self) -> Live {
        self.connections_accepted.inc();
        Live::new(&self.connections_open)
    }

    /// The server closed a connection unasked.
    pub(crate) fn connection_refused(&self, reason: CloseReason) {
        self.connections_refused.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// A request was handled: `code` is `None` for a code protocol 3 does not have;
    /// `response` is what was answered (`None`: nothing, as after 1030).
    pub(crate) fn request(&self, code: Option<RequestCode>, response: Option<&Response>) {
        let outcome = match response {
            Some(Response::GeneralError) => "refused",
            Some(Response::RegistrationFailed | Response::ReconnectDenied { .. }) => "denied",
            _ => "ok",
        };
        self.count_request(code, outcome);
    }

    /// A request whose header or payload did not decode.
    pub(crate) fn malformed(&self, code: Option<RequestCode>) {
        self.count_request(code, "malformed");
        self.refusal(Reason::Malformed);
    }

    fn count_request(&self, code: Option<RequestCode>, outcome: &'static str) {
        let code = code.map_or_else(|| "unknown".to_owned(), |c| c.as_u16().to_string());
        self.requests.get_or_create(&RequestLabels { code, outcome }).inc();
    }

    /// A request was answered 2107 for `reason`.
    pub(crate) fn refusal(&self, reason: Reason) {
        self.refusals.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// An upload ended so.
    /// A protocol-4 `ERROR` frame was sent.
    pub(crate) fn v4_error(&self, code: ErrorCode) {
        self.v4_errors.get_or_create(&CodeLabel { code: code.name() }).inc();
    }

    pub(crate) fn upload(&self, outcome: UploadOutcome) {
        self.uploads.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
    }

    /// A protocol-4 download ended so.
    pub(crate) fn download(&self, outcome: DownloadOutcome) {
        self.downloads.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
    }

    /// `bytes` of file content went out in a download's `DATA`.
    pub(crate) fn download_sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }

    /// A protocol-4 download began at an offset (a client's partial file continued).
    pub(crate) fn download_resumed(&self) {
        self.resumed_downloads.inc();
    }

    /// A protocol-4 upload continued from its first `offset` bytes, kept by the server.
    pub(crate) fn upload_resumed(&self, offset: u64) {
        self.resumed_uploads.inc();
        self.resumed_bytes.inc_by(offset);
    }

    /// An upload's content arrived whole, `started` at its header.
    pub(crate) fn upload_received(&self, started: Instant) {
        self.upload_duration.observe(started.elapsed().as_secs_f64());
    }

    /// A session was made; it counts while the guard lives.
    pub(crate) fn session_started(&self) -> Live {
        Live::new(&self.sessions)
    }

    /// A records call took this long, from `started`.
    pub(crate) fn db_call(&self, took: std::time::Duration) {
        self.db_duration.observe(took.as_secs_f64());
    }

    /// `stream`, with the bytes read from it counted as received.
    pub(crate) fn count_received<S>(&self, stream: S) -> Counted<S> {
        Counted { inner: stream, received: self.received_bytes.clone() }
    }
}

/// Something that counts in a gauge while it lives (an open connection, a session).
#[derive(Debug)]
pub(crate) struct Live(Gauge);

impl Live {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Live(gauge.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A stream whose reads add to the received-bytes counter: every byte a peer sends is
/// counted where it enters, whatever part of the protocol reads it.
pub(crate) struct Counted<S> {
    inner: S,
    received: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.received.inc_by(read as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_the_prefix_before_anything_happens() {
        let text = Metrics::new().render(Some(4096));
        for name in [
            "securexfer_connections_open",
            "securexfer_connections_accepted_total",
            "securexfer_connections_refused_total",
            "securexfer_requests_total",
            "securexfer_refusals_total",
            "securexfer_v4_errors_total",
            "securexfer_received_bytes_total",
            "securexfer_uploads_total",
            "securexfer_upload_duration_seconds",
            "securexfer_sessions",
            "securexfer_storage_free_bytes",
            "securexfer_db_duration_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        assert!(text.contains("securexfer_storage_free_bytes 4096\n"), "{text}");
    }

    #[test]
    fn requests_are_labelled_by_code_and_outcome_and_guards_count_while_they_live() {
        let m = Metrics::new();
        m.request(Some(RequestCode::Register), Some(&Response::GeneralError));
        m.request(Some(RequestCode::CrcRetry), None);
        m.malformed(None);
        let live = (m.connection_opened(), m.session_started());
        let text = m.render(None);
        assert!(text.contains(r#"securexfer_requests_total{code="1025",outcome="refused"} 1"#));
        assert!(text.contains(r#"securexfer_requests_total{code="1030",outcome="ok"} 1"#));
        assert!(
            text.contains(r#"securexfer_requests_total{code="unknown",outcome="malformed"} 1"#)
        );
        assert!(text.contains(r#"securexfer_refusals_total{reason="malformed"} 1"#), "{text}");
        assert!(text.contains("securexfer_connections_open 1\n"), "{text}");
        assert!(text.contains("securexfer_sessions 1\n"), "{text}");
        drop(live);
        let text = m.render(None);
        assert!(text.contains("securexfer_connections_open 0\n"), "{text}");
        assert!(text.contains("securexfer_sessions 0\n"), "{text}");
    }

    #[tokio::test]
    async fn a_counted_stream_counts_every_byte_read() {
        let m = Metrics::new();
        let mut stream = m.count_received(&b"0123456789"[..]);
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf).await.unwrap();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await.unwrap();
        assert!(m.render(None).contains("securexfer_received_bytes_total 10\n"));
    }
}
