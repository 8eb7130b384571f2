//! The server's state that outlives a connection: records in SQLite and files on disk.

pub mod db;
pub mod files;
pub mod records;

pub use db::{ClientRecord, CommitIntent, Db, DbError, FileRecord, VersionRecord};
pub use files::{Storage, VERSIONS_DIR};
pub use records::{Records, RecordsError, RecordsFuture, SharedRecords, SqliteRecords};
