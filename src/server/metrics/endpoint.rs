//! The HTTP endpoint of `serve --metrics ADDR`: `GET /metrics` answers the Prometheus text
//! exposition; anything else gets 404 (another path), 405 (another method) or 400.
//!
//! A scraper sends one small request per connection and reads the answer, so this is a
//! responder for exactly that, not an HTTP server: one request per connection (answered
//! with `Connection: close`), a bounded head, a deadline, a few connections at once. It
//! carries no authentication: bind it to loopback or a monitoring network.

use super::super::Shared;
use crate::store::BlobStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The path the metrics are served on.
pub const PATH: &str = "/metrics";
/// Largest request head read; a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a scrape connection gets for its request and our answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Scrape connections served at once; more wait in the listen queue.
const MAX_SCRAPES: usize = 8;
/// The `Content-Type` of the text format.
const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Serves scrapes on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = Arc::clone(&limit).acquire_owned().await.expect("never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, answer(stream, &shared)).await.is_err() {
                debug!(%peer, "metrics endpoint: a scrape took longer than {DEADLINE:?}");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, shared: &Shared) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = match route(&head) {
        Route::Metrics { head_only } => {
            let storage = shared.storage.clone();
            let free =
                tokio::task::spawn_blocking(move || storage.available_bytes()).await.ok().flatten();
            let text = shared.metrics.render(free);
            ("200 OK", if head_only { Body::Length(text.len()) } else { Body::Text(text) })
        }
        Route::NotFound => ("404 Not Found", Body::Text(format!("only {PATH} is served here\n"))),
        Route::WrongMethod => ("405 Method Not Allowed", Body::Text("use GET\n".into())),
        Route::Bad => ("400 Bad Request", Body::Text("not an HTTP request\n".into())),
    };
    let _ = stream.write_all(body.response(status).as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The metrics (`GET`, or `HEAD` for the headers only).
    Metrics { head_only: bool },
    /// Another path.
    NotFound,
    /// The metrics path with another method.
    WrongMethod,
    /// No request line.
    Bad,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::Bad };
    let mut words = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") || words.next().is_some() {
        return Route::Bad;
    }
    // A query string does not change what is served.
    let path = target.split('?').next().unwrap_or_default();
    match (method, path == PATH) {
        (_, false) => Route::NotFound,
        ("GET", true) => Route::Metrics { head_only: false },
        ("HEAD", true) => Route::Metrics { head_only: true },
        _ => Route::WrongMethod,
    }
}

/// An answer's body, or (for HEAD) only its length.
enum Body {
    Text(String),
    Length(usize),
}

impl Body {
    fn response(self, status: &str) -> String {
        let content_type =
            if status.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
        let (length, text) = match self {
            Body::Text(text) => (text.len(), text),
            Body::Length(n) => (n, String::new()),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n{text}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_metrics_path_are_served() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(route(get), Route::Metrics { head_only: false });
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head_only: true });
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::WrongMethod);
        assert_eq!(route(b"\x16\x03\x01 garbage"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }

    #[test]
    fn answers_close_the_connection_and_give_the_length() {
        let text = Body::Text("abc".into()).response("404 Not Found");
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n") && text.contains("Connection: close"));
        assert!(text.ends_with("\r\n\r\nabc"));
        let head = Body::Length(99).response("200 OK");
        assert!(head.contains("Content-Length: 99\r\n") && head.ends_with("\r\n\r\n"));
        assert!(head.contains(CONTENT_TYPE));
    }
}
