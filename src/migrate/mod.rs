//! Moving accounts in and out (XEP-0227, the Portable Import/Export
//! Format): `waxwing ctl import FILE|DIR` and `waxwing ctl export DIR`.
//!
//! - [`parse`] streams `<user/>` elements out of export files (XInclude
//!   followed), one at a time;
//! - [`pie`] turns one into what Waxwing stores ([`pie::PieUser`]) and
//!   back;
//! - [`import`] writes each user in one transaction
//!   (`Store::import_user`), idempotently, with a progress bar and a
//!   per-kind report (or only the report, in a dry run);
//! - [`export`] writes one `user@host.xml` file per account, the layout
//!   Prosody's `mod_storage_xep0227` reads and writes.
//!
//! Both work on the database directly: run them with the server stopped
//! (or at least without users logged in, as a running server's caches do
//! not see what the import writes). See ARCHITECTURE.md "Migration".

/// The XEPs of this part, for xep/waxwing.doap (tests/doap.rs).
pub const XEPS: &[u16] = &[227];

pub mod export;
pub mod import;
pub mod parse;
pub mod pie;
