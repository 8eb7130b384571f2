//! The server's state that outlives a connection: records behind [`Records`] (in SQLite,
//! [`SqliteRecords`], or in PostgreSQL, [`PostgresRecords`]), and the files' bytes in a
//! blob store ([`BlobStore`]; on local disk, [`Storage`]).

pub mod blob;
pub mod db;
pub mod local;
pub mod postgres;
pub mod records;

pub use blob::{BlobInfo, BlobStore, Chunk, Committed, StagedBlob};
pub use db::{
    Attached, ClientKey, ClientRecord, CommitIntent, Db, DbError, FileRecord, FinishedCommit,
    NewClient, Registered, StagedObject, V4Content, VersionRecord,
};
pub use local::{StagedFile, Storage, VERSIONS_DIR};
pub use postgres::{PostgresError, PostgresRecords};
pub use records::{Records, RecordsError, RecordsFuture, SharedRecords, SqliteRecords};
