//! `securexfer db inspect`: what the server has recorded, without key material.

use super::out::outln;
use crate::cli::InspectArgs;
use securexfer::protocol::ClientId;
use securexfer::store::{ClientRecord, Db, FileRecord};
use std::path::Path;
use std::process::ExitCode;

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let db = Db::open_read_only(&args.db)?;
    let mut clients = db.clients()?;
    let mut files = db.files()?;
    if let Some(filter) = &args.client {
        let id = ClientId::parse(filter);
        clients.retain(|c| c.name == *filter || Some(c.id) == id);
        files.retain(|f| f.client_name == *filter || Some(f.client_id) == id);
    }
    if args.json {
        print_json(&clients, &files, &args.storage)?;
    } else {
        print_tables(&clients, &files, &args.storage);
    }
    Ok(ExitCode::SUCCESS)
}

/// Size on disk, if the stored file is there.
fn on_disk(storage: &Path, file: &FileRecord) -> Option<u64> {
    std::fs::metadata(storage.join(&file.path_name)).ok().map(|m| m.len())
}

fn print_json(
    clients: &[ClientRecord],
    files: &[FileRecord],
    storage: &Path,
) -> anyhow::Result<()> {
    let clients: Vec<_> = clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id.to_hex(),
                "name": c.name,
                "last_seen": c.last_seen,
                "has_public_key": c.public_key.is_some(),
                "has_aes_key": c.has_aes_key,
            })
        })
        .collect();
    let files: Vec<_> = files
        .iter()
        .map(|f| {
            let disk = on_disk(storage, f);
            serde_json::json!({
                "client_id": f.client_id.to_hex(),
                "client_name": f.client_name,
                "file_name": f.file_name,
                "path": f.path_name,
                "verified": f.verified,
                "size": f.size,
                "cksum": f.cksum,
                "stored_at": f.stored_at,
                "present": disk.is_some(),
                "size_on_disk": disk,
            })
        })
        .collect();
    let doc = serde_json::json!({ "clients": clients, "files": files });
    outln!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn print_tables(clients: &[ClientRecord], files: &[FileRecord], storage: &Path) {
    outln!("CLIENTS ({})", clients.len());
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                c.id.to_hex(),
                c.name.clone(),
                c.last_seen.clone().unwrap_or_else(|| "-".into()),
                yes_no(c.public_key.is_some()),
                yes_no(c.has_aes_key),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "LAST SEEN (UTC)", "PUBLIC KEY", "AES KEY"], &rows);
    outln!();
    outln!("FILES ({})", files.len());
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let disk = on_disk(storage, f);
            vec![
                f.client_name.clone(),
                f.file_name.clone(),
                f.path_name.clone(),
                yes_no(f.verified),
                disk.map_or_else(|| "-".into(), |s| s.to_string()),
                yes_no(disk.is_some()),
            ]
        })
        .collect();
    print_table(&["CLIENT", "FILE NAME", "STORED AT", "VERIFIED", "SIZE", "PRESENT"], &rows);
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
