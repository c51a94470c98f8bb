//! The gateway's exit codes: sysexits(3) where one fits, 2 for configuration errors as clap
//! uses for usage errors. Listed in `--help`.

/// Stopped as asked (SIGTERM/SIGINT), or `--check-config` found the configuration valid.
pub const SUCCESS: u8 = 0;
/// Any failure after the start not listed below.
pub const FAILURE: u8 = 1;
/// A flag, variable or `--config` file value is wrong (clap's usage-error code).
pub const USAGE: u8 = 2;
/// EX_UNAVAILABLE: an address to listen on cannot be bound (in use, not local, no
/// permission); the service it would offer is unavailable.
pub const UNAVAILABLE: u8 = 69;
