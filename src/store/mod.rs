//! The server's state that outlives a connection: records behind [`Records`] (in SQLite,
//! [`SqliteRecords`], or in PostgreSQL, [`PostgresRecords`]), and the files' bytes in a
//! blob store ([`BlobStore`]; on local disk, [`Storage`], or in an S3-compatible object
//! store, [`S3Store`]; the server holds whichever it was started with as [`Blobs`]).

pub mod blob;
pub mod blobs;
pub mod db;
pub mod local;
pub mod migrate;
pub mod postgres;
pub mod records;
pub mod s3;

pub use blob::{BlobInfo, BlobStore, Chunk, Committed, StagedBlob};
pub use blobs::{AnyStaged, Blobs, CommitPlan, GroupItem};
pub use db::{
    Attached, ClientKey, ClientRecord, CommitIntent, Db, DbError, FileRecord, FinishedCommit,
    InviteRecord, NewClient, PathFacts, PathRange, PutFacts, Quota, Registered, Removal, Removed,
    StagedObject, StoredCopy, UnfinishedUpload, Usage, V4Content, VersionRecord, upper_bound,
};
pub use local::{GroupCommit, StagedFile, Storage, VERSIONS_DIR};
pub use postgres::{PostgresError, PostgresRecords};
pub use records::{
    PendingTimes, Records, RecordsError, RecordsFuture, SharedPending, SharedRecords,
    SharedSession, SqliteRecords,
};
pub use s3::{ObjectHashes, S3Staged, S3Store, S3Url};
