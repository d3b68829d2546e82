//! Exit codes, from sysexits.h, so systemd and scripts can tell a bad configuration from a
//! missing dependency from a bug.

/// Success, including a clean drain after SIGTERM.
pub const OK: u8 = 0;
/// A `verify` or `status` check failed.
pub const CHECK_FAILED: u8 = 1;
/// EX_USAGE: bad arguments (an unknown filter value), or a bulk action refused for want of a
/// confirmation.
pub const USAGE: u8 = 64;
/// EX_DATAERR: the input was refused (e.g. `enqueue`: a row the database will not take).
pub const DATAERR: u8 = 65;
/// EX_UNAVAILABLE: a dependency is missing (no database, no PostgreSQL binaries).
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error.
pub const SOFTWARE: u8 = 70;
/// EX_OSERR: the operating system refused something (e.g. a listen socket), for a reason that
/// may pass.
pub const OSERR: u8 = 71;
/// EX_NOPERM: not permitted (e.g. a port below 1024 without the capability).
pub const NOPERM: u8 = 77;
/// EX_CONFIG: the configuration is invalid. Restarting will not help.
pub const CONFIG: u8 = 78;
/// A second SIGTERM/SIGINT during the drain: exit at once (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
