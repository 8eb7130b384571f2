//! Reading a single-machine deployment's SQLite records row by row, every column, in
//! pages (so that a large database is never read into memory whole), safely while its
//! server runs (a read-only connection; each page is one consistent read).

use super::{ClientRow, Content, CopyRow, InviteRow, VersionRow};
use crate::store::db::{Db, DbError};
use rusqlite::{Row, params};

/// Rows read per page.
const PAGE: i64 = 500;

/// The source's rows.
pub(super) struct SourceDb {
    db: Db,
}

/// Where a page of files or versions ends, for the next to start after.
#[derive(Debug, Clone, Default)]
pub(super) struct After {
    id: Vec<u8>,
    first: String,
    second: String,
    version: i64,
}

impl SourceDb {
    pub(super) fn new(db: Db) -> Self {
        SourceDb { db }
    }

    fn conn(&self) -> &rusqlite::Connection {
        self.db.connection()
    }

    pub(super) fn clients(&self) -> Result<Vec<ClientRow>, DbError> {
        let sql = "SELECT ID, Name, PublicKey, LastSeen, AESKey, UsualAddress, KeySpki,
                          KeyFingerprint, KeyAttachedAt, Protocol3Allowed, QuotaBytes, QuotaFiles
                   FROM clients ORDER BY ID";
        let mut stmt = self.conn().prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(ClientRow {
                id: r.get(0)?,
                name: r.get(1)?,
                public_key: r.get(2)?,
                last_seen: r.get(3)?,
                aes_key: r.get(4)?,
                usual_address: r.get(5)?,
                key_spki: r.get(6)?,
                key_fingerprint: r.get(7)?,
                key_attached_at: r.get(8)?,
                protocol3_allowed: r.get::<_, i64>(9)? != 0,
                quota_bytes: r.get(10)?,
                quota_files: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn invites(&self) -> Result<Vec<InviteRow>, DbError> {
        let sql = "SELECT TokenHash, Name, CreatedAt, ExpiresAt, UsedAt, UsedBy FROM invites
                   ORDER BY TokenHash";
        let mut stmt = self.conn().prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(InviteRow {
                token_hash: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
                used_at: r.get(4)?,
                used_by: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The next page of file rows after `after`, ordered by client, path and name: the
    /// rows that describe one stored file (several names may store to one path) come
    /// together.
    pub(super) fn files_after(&self, after: &mut After) -> Result<Vec<CopyRow>, DbError> {
        let sql = "SELECT ID, FileName, PathName, Verified, Size, Cksum, StoredAt, Blake3,
                          MtimeNs, Generation, Protocol
                   FROM files WHERE (ID, PathName, FileName) > (?1, ?2, ?3)
                   ORDER BY ID, PathName, FileName LIMIT ?4";
        let mut stmt = self.conn().prepare_cached(sql)?;
        let rows = stmt.query_map(params![after.id, after.first, after.second, PAGE], copy_row)?;
        let rows: Vec<CopyRow> = rows.collect::<Result<_, _>>()?;
        if let Some(last) = rows.last() {
            *after = After {
                id: last.id.clone(),
                first: last.path_name.clone(),
                second: last.file_name.clone(),
                ..After::default()
            };
        }
        Ok(rows)
    }

    /// The next page of kept versions after `after`.
    pub(super) fn versions_after(&self, after: &mut After) -> Result<Vec<VersionRow>, DbError> {
        let sql = "SELECT ID, Name, Version, FileName, PathName, Size, Cksum, StoredAt, Blake3,
                          MtimeNs, Generation, Protocol
                   FROM versions WHERE (ID, Name, Version) > (?1, ?2, ?3)
                   ORDER BY ID, Name, Version LIMIT ?4";
        let mut stmt = self.conn().prepare_cached(sql)?;
        let rows = stmt.query_map(params![after.id, after.first, after.version, PAGE], |r| {
            Ok(VersionRow {
                id: r.get(0)?,
                name: r.get(1)?,
                version: r.get(2)?,
                file_name: r.get(3)?,
                path_name: r.get(4)?,
                content: content(r, 5)?,
            })
        })?;
        let rows: Vec<VersionRow> = rows.collect::<Result<_, _>>()?;
        if let Some(last) = rows.last() {
            *after = After {
                id: last.id.clone(),
                first: last.name.clone(),
                version: last.version,
                ..After::default()
            };
        }
        Ok(rows)
    }

    /// The highest generation the source gave any copy.
    pub(super) fn generation(&self) -> Result<i64, DbError> {
        let sql = "SELECT max(g) FROM (SELECT Value AS g FROM counters WHERE Name = 'generation'
                   UNION ALL SELECT max(Generation) FROM files
                   UNION ALL SELECT max(Generation) FROM versions)";
        Ok(self.conn().query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?.unwrap_or(0))
    }

    /// How many commits are under way (or were cut short by a crash) and how many
    /// protocol-4 uploads are unfinished: neither is moved.
    pub(super) fn in_flight(&self) -> Result<(i64, i64), DbError> {
        let sql = "SELECT (SELECT count(*) FROM commit_intents),
                          (SELECT count(*) FROM unfinished_uploads)";
        Ok(self.conn().query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }
}

fn copy_row(r: &Row<'_>) -> rusqlite::Result<CopyRow> {
    Ok(CopyRow {
        id: r.get(0)?,
        file_name: r.get(1)?,
        path_name: r.get(2)?,
        verified: r.get::<_, i64>(3)? != 0,
        content: content(r, 4)?,
    })
}

/// Size, Cksum, StoredAt, Blake3, MtimeNs, Generation, Protocol from column `at` on.
fn content(r: &Row<'_>, at: usize) -> rusqlite::Result<Content> {
    Ok(Content {
        size: r.get(at)?,
        cksum: r.get(at + 1)?,
        stored_at: r.get(at + 2)?,
        blake3: r.get(at + 3)?,
        mtime_ns: r.get(at + 4)?,
        generation: r.get(at + 5)?,
        protocol: r.get::<_, i64>(at + 6)? as i16,
    })
}
