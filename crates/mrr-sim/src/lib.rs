//! MRR's deterministic simulator.
//!
//! Runs 3 to 5 regions of the real sans-IO core — the writer's `Engine` (admission, HLC, merge,
//! group commit batches), `OutboundSession` (cursors, window, relay, cumulative acks) and the
//! `MemStore` that passes the same conformance suite as fjall — over a simulated network, disk
//! and clock driven by one seeded RNG and one ordered event queue. Nothing reads the wall clock
//! or depends on thread timing: a seed replays exactly.
//!
//! Faults: delay and jitter, reordering, duplication, loss, symmetric and one-way partitions,
//! process crash and restart, power loss (under `durability: buffered` it takes the commits
//! not yet persisted), clock skew up to `max_clock_skew` and drift. After the fault
//! phase every fault is healed and the [`invariants`] are checked.
//!
//! What is not simulated is stated in `docs/architecture.md` (the handshake's cryptography,
//! HTTP).

mod disk;
pub mod invariants;
mod net;
mod notary;
mod schedule;
pub mod strong;
mod world;

pub use schedule::{FaultEvent, Schedule};
pub use world::{run, shrink, RunReport, SimConfig, Strategy, Violation};
