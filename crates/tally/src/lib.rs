//! The `tally` binary's library half: how a server process is assembled from the store, the
//! API, the relay and the maintenance loops. `main.rs` parses the command line; tests start the
//! same assembly through [`server::start`].
//!
//! # Layout
//!
//! - [`server`]: start and stop a server process's tasks.
//! - [`admin`]: tenants and API keys, for the operator commands.
//! - [`chaos`]: `tally chaos`, a seeded fault-injection run over real processes, then checks.
//!
//! This crate only assembles: a new command, ingress, effect or job is written in its own
//! crate (see `tally-commands`, `tally-api`, `tally-dispatch`) and started here, in [`server`].

pub mod admin;
pub mod chaos;
pub mod checks;
pub mod server;
