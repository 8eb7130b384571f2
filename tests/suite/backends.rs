//! The real backends of the scale-out configuration (issue 16), started by
//! `.ci/services.sh`: that each is there and is what it claims to be. Tests that need one
//! skip with a message when its variable is absent, and fail in CI (see
//! [`common::real_backend`]).

use crate::common;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `host:port` of an `scheme://[user[:password]@]host:port[/…]` address.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_owned()
}

fn connect(url: &str) -> TcpStream {
    let address = host_port(url);
    let stream =
        TcpStream::connect(&address).unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

#[test]
fn the_test_postgres_speaks_the_postgres_protocol_on_loopback() {
    let Some(url) = common::test_postgres() else { return };
    assert!(host_port(&url).starts_with("127.0.0.1:"), "{url} is not on loopback");
    let mut stream = connect(&url);
    // An SSLRequest (length 8, code 80877103): a PostgreSQL server answers one byte, 'S'
    // or 'N' (this one has no TLS).
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N", "not a PostgreSQL server without TLS");
}

#[test]
fn the_test_s3_server_refuses_an_unsigned_request_as_s3_does() {
    let Some((endpoint, bucket)) = common::test_s3() else { return };
    assert!(host_port(&endpoint).starts_with("127.0.0.1:"), "{endpoint} is not on loopback");
    let bucket = bucket.trim_start_matches("s3://").split('/').next().unwrap().to_owned();
    let mut stream = connect(&endpoint);
    let request = format!(
        "GET /{bucket} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host_port(&endpoint)
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or_default().to_owned();
    assert!(status.starts_with("HTTP/1.1 4"), "an unsigned request got {status:?}");
    assert!(answer.contains("<Error>"), "no S3 error document in {answer:?}");
}

#[test]
fn host_port_is_found_in_urls_with_and_without_credentials() {
    assert_eq!(host_port("postgres://u:p@127.0.0.1:5432/db"), "127.0.0.1:5432");
    assert_eq!(host_port("http://127.0.0.1:9000"), "127.0.0.1:9000");
}
