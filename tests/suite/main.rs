//! The integration tests, as one test binary with a module per area (one link instead of
//! nine, and helpers shared without copies). They start the real `securexfer` binary, or
//! serve in process through the library's public seam, and speak raw bytes where an
//! attacker would.

mod common;
mod fake_server;

mod backends;
mod captures;
mod client;
mod fuzz_corpus;
mod generated;
mod in_process;
mod kill_loop;
mod python_interop;
mod records;
mod server;
mod system_tools;
mod v4_attacks;
mod v4_client;
mod v4_fetch;
mod v4_folders;
mod v4_get_many;
mod v4_group;
mod v4_parallel;
mod v4_peer;
mod v4_quota;
mod v4_resume;
mod v4_resume_client;
mod v4_server;
mod vectors;
