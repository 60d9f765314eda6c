//! `edgerep bench`: benchmarks that print figures next to the limit they are compared with,
//! measured in the same run (raw redb, raw quinn), since only ratios from one run compare on a
//! shared machine. One module per benchmark: `ingest` (the local API into the store), `plugin`
//! (a plugin's cost per toolchain), `replicate` (two nodes: throughput, catch-up, latency,
//! memory), `reconcile` (anti-entropy's round trips and bytes), `topology` (chains, stars and
//! meshes of real processes).

mod apply_alone;
pub mod ingest;
mod machine;
pub mod plugin;
pub mod reconcile;
pub mod replicate;
mod scratch;
pub mod topology;
