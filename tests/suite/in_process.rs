//! Protocol conversations served in process through the library's public seam
//! (`Server::with_records` and `Server::serve_connection` over `tokio::io::duplex`), as
//! mini-redis tests its server: no process and no port, so a test can hold the server's
//! records and look at them directly.

use securexfer::content::Scheme;
use securexfer::crypto::{Cksum, PrivateKey};
use securexfer::protocol::{
    ClientId, FileHeader, FixedName, RESPONSE_HEADER_LEN, Request, Response, ResponseHeader,
    Version, decode_response_payload, encode_request,
};
use securexfer::server::{Config, Server};
use securexfer::store::{Db, Records, SqliteRecords};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

async fn exchange(stream: &mut DuplexStream, bytes: &[u8]) -> Response {
    stream.write_all(bytes).await.expect("write");
    let mut head = [0u8; RESPONSE_HEADER_LEN];
    stream.read_exact(&mut head).await.expect("a response header");
    let header = ResponseHeader::decode(&head).expect("a valid header");
    assert_eq!(header.version, Version::V3.byte());
    let mut payload = vec![0u8; header.payload_size as usize];
    stream.read_exact(&mut payload).await.expect("the payload");
    decode_response_payload(&header, &payload).expect("a valid response")
}

fn name(text: &str) -> FixedName {
    FixedName::new(text, "name").expect("a valid name")
}

#[tokio::test]
async fn a_whole_transfer_served_in_process_is_recorded_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::new(dir.path().join("storage"), dir.path().join("not-used.db"));
    let records = Arc::new(SqliteRecords::new(Db::open_in_memory().expect("a database")));
    let server = Server::with_records(config, records.clone()).expect("the server");
    let (mut client, server_end) = tokio::io::duplex(64 * 1024);
    let (_stop, stop) = watch::channel(false);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let served = tokio::spawn(server.serve_connection(server_end, peer, stop));

    let register = Request::Register { name: name("in-process") };
    let Response::Registered { client_id: id } =
        exchange(&mut client, &encode_request(Version::V3, ClientId::ZERO, &register)).await
    else {
        panic!("not registered");
    };
    let key = PrivateKey::generate();
    let public_key = key.public_key().to_field().expect("a 1024-bit key");
    let send_key = Request::SendPublicKey { name: name("in-process"), public_key };
    let Response::PublicKeyAccepted { encrypted_key, .. } =
        exchange(&mut client, &encode_request(Version::V3, id, &send_key)).await
    else {
        panic!("no AES key");
    };
    let aes = key.decrypt_aes_key(&encrypted_key).expect("the session key");

    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let content = securexfer::crypto::aes::encrypt_to_vec(&aes, &data);
    assert_eq!(content.len(), Scheme::of(Version::V3, aes).sealed_len(data.len()));
    let file_name = name("in-process.bin");
    let header = FileHeader { content_size: content.len() as u32, file_name: file_name.clone() };
    let mut upload = encode_request(Version::V3, id, &Request::SendFile(header));
    upload.extend_from_slice(&content);
    match exchange(&mut client, &upload).await {
        Response::FileReceived { cksum, .. } => assert_eq!(cksum, Cksum::of(&data)),
        other => panic!("{other:?}"),
    }
    let confirm = Request::CrcOk { file_name };
    assert_eq!(
        exchange(&mut client, &encode_request(Version::V3, id, &confirm)).await,
        Response::Acknowledged { client_id: Some(id) }
    );
    drop(client);
    served.await.expect("the connection task");

    let files = records.files().await.expect("the files on record");
    assert_eq!(files.len(), 1);
    let file = &files[0];
    assert!(file.verified);
    assert_eq!((file.size, file.cksum), (Some(data.len() as u64), Some(Cksum::of(&data))));
    let stored = std::fs::read(dir.path().join("storage").join(&file.path_name)).unwrap();
    assert!(stored == data, "the stored bytes differ");
}
