//! What the CLI, the demo and the benchmarks share to talk to nodes on this machine: a blocking
//! client for the local API (`client`), starter configs (`starter`) and local clusters with
//! their CA and certificates (`cluster`).

pub mod client;
pub mod cluster;
pub mod starter;
