//! The operations layer: what a call does, callable without an HTTP request.

pub mod admin;
pub mod audit;
pub mod bridge;
pub mod captoken;
pub mod deadlines;
pub mod environment;
pub mod error;
pub mod limits;
pub mod patch;
pub mod policy;
pub mod processes;
pub mod revocation;
pub mod state;
pub mod tools;
pub mod transfer;

pub use error::{Error, Kind};
