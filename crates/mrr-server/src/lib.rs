//! MRR server: the composition root of a node.
//!
//! Reads the config, opens the store, starts the writer and replication, and serves the HTTP
//! API. Protocol logic lives in the crates it wires together; this crate holds none.

pub mod access;
pub mod admission;
pub mod config;
pub mod consensus;
pub mod dev;
pub mod forward;
pub mod gate;
pub mod health;
pub mod http;
mod https;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod read_levels;
mod reload;
pub mod repair;
pub mod request;
pub mod review;
pub mod strong;
pub mod throttle;
pub mod write_acks;

pub use config::Config;
pub use node::{Listeners, Node, NodeOptions, StartError};
