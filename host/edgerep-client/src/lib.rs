//! What the CLI, the demo and the benchmarks share to talk to nodes on this machine: a blocking
//! client for the local API (`client`), starter configs (`starter`) and local clusters with
//! their CA and certificates (`cluster`), and how it writes files (`files`).

pub mod client;
pub mod cluster;
pub mod files;
pub mod starter;
