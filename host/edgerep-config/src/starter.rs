//! The starter configuration `edgerep init` writes.

use std::net::SocketAddr;

use edgerep_wire::event::NodeId;

use crate::raw::{
    DEFAULT_COMMIT_MAX_EVENTS, DEFAULT_MAX_BATCH_EVENTS, DEFAULT_MAX_CLOCK_SKEW_MS,
    DEFAULT_MAX_DEAD_LETTER_BYTES, DEFAULT_MAX_DEAD_LETTERS, DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_META_ENTRIES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_MAX_VALUE_DEPTH, DEFAULT_SYNC_INTERVAL_MS,
};

/// The text of a starter configuration, with comments explaining each key, as `edgerep init`
/// writes it: the given node id and listeners, `data_dir = "data"` (next to the file), no peers,
/// and the open collection policy (`accept_undeclared = true`). Optional keys appear commented
/// out with their defaults. The result always parses with [`crate::Config::parse`].
pub fn starter_toml(
    node_id: &NodeId,
    api_listen: SocketAddr,
    replication_listen: SocketAddr,
) -> String {
    // Node ids are `[A-Za-z0-9._-]` and socket addresses have no quotes or backslashes, so they
    // can go into TOML basic strings as they are.
    format!(
        r#"# edgerep node configuration.
# Unknown keys are errors, so a typo is reported instead of silently ignored.

[node]
# This node's id: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.
# Every peer knows this node by it, and it breaks ties between concurrent writes.
id = "{node_id}"
# Where the node keeps its database. A relative path is relative to this file's directory.
data_dir = "data"
# A peer's change whose hybrid-clock timestamp is further ahead of this node's wall clock is
# applied, but does not move this node's clock.
# max_clock_skew_ms = {DEFAULT_MAX_CLOCK_SKEW_MS}
# How often writes to collections with durability = "periodic" are synced to disk.
# sync_interval_ms = {DEFAULT_SYNC_INTERVAL_MS}

[api]
# The local HTTP API that applications talk to (IP address and port).
listen = "{api_listen}"

[replication]
# Where this node listens for its peers (QUIC). Must differ from api.listen.
listen = "{replication_listen}"
# With peers, this node's mutual-TLS identity (PEM files; `edgerep certs` creates them):
# ca = "certs/ca.pem"            # the deployment CA: peers must present certificates it signed
# cert = "certs/node.pem"        # this node's certificate, naming this node's id
# key = "certs/node.key"         # this node's private key

# The other sites this node replicates with. Add one [[peers]] table per site:
# [[peers]]
# id = "site-b"                  # the peer's node.id
# address = "site-b.example:7071" # host:port of the peer's replication.listen

[collections]
# true: any valid collection name is accepted and created on its first write.
# To accept only the collections declared below, set this to false.
accept_undeclared = true

# Declare a collection to list it explicitly (required when accept_undeclared = false):
# [[collections.declared]]
# name = "orders"
# resolver = "lww"               # last writer wins, or the name of a resolver plugin
# transforms_on_ingest = []      # plugin names, run in order before events are stored
# transforms_on_apply = []       # plugin names, run in order on events from peers
# durability = "immediate"       # acknowledge after the disk sync; "periodic": before it
#                                # (faster; a crash may lose the last sync interval of writes)

# A plugin: a WebAssembly component, pinned by its sha256 (`edgerep plugin check FILE.wasm`).
# [plugins.redact]
# path = "plugins/redact.wasm"   # relative to this file
# sha256 = "0000000000000000000000000000000000000000000000000000000000000000"  # the file's sha256
# fuel = 10000000                # per call
# memory_bytes = 16777216
# deadline_ms = 1000             # wall-clock backstop
# on_failure = "dead-letter"     # or "skip" or "halt"
# params = {{ remove = "card" }}

# Limits on what the API accepts; each must be greater than 0. Defaults shown.
[limits]
# max_key_bytes = {DEFAULT_MAX_KEY_BYTES}
# max_value_bytes = {DEFAULT_MAX_VALUE_BYTES}        # deterministic CBOR encoding of one value
# max_value_depth = {DEFAULT_MAX_VALUE_DEPTH}      # at most 100
# max_meta_entries = {DEFAULT_MAX_META_ENTRIES}
# max_batch_events = {DEFAULT_MAX_BATCH_EVENTS}      # events in one API request
# max_request_bytes = {DEFAULT_MAX_REQUEST_BYTES}  # HTTP request body
# max_dead_letters = {DEFAULT_MAX_DEAD_LETTERS}    # kept at most; past it, apply halts instead
# max_dead_letter_bytes = {DEFAULT_MAX_DEAD_LETTER_BYTES}  # their records together; the same past it

# Group commit: how many events at most go into one durable transaction.
[commit]
# max_events = {DEFAULT_COMMIT_MAX_EVENTS}

# Changelog retention: entries every peer acknowledged are removed (keeping the newest
# keep_events per origin); a peer that needs removed entries gets a snapshot of the state.
# Must be false when a collection has transforms_on_apply. Defaults shown.
[retention]
# compact = true
# keep_events = 100000
# interval_ms = 10000
# peer_absent_ms = 604800000     # a peer unheard of (or connected but acknowledging nothing new while it lacks events) this long (7 days) stops holding entries back; 0: never
# max_held_events = 10000000     # per origin, the most entries kept for peers that lack them (a peer further behind gets a snapshot); 0: no bound
"#
    )
}
