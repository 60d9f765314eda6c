//! Why a plugin could not be loaded or inspected.

/// Why [`crate::Runtime::new`], [`crate::Runtime::load`] or [`crate::Runtime::inspect`] failed.
///
/// `plugin` fields name the plugin and its file as `"NAME" (PATH)`; for
/// [`crate::Runtime::inspect`], which has neither, they say `component`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The engine or the linker could not be set up (a bug or an unsupported host).
    #[error("cannot set up the webassembly engine: {0}")]
    Engine(String),
    /// The limits cannot work (zero fuel, zero memory or a zero deadline).
    #[error("plugin {plugin}: invalid limits: {reason}")]
    InvalidLimits {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The expected hash is not 64 hexadecimal digits.
    #[error("plugin {plugin}: expected sha256 {expected:?} is not 64 hexadecimal digits")]
    InvalidHash {
        /// The plugin.
        plugin: String,
        /// The configured hash.
        expected: String,
    },
    /// The file's SHA-256 is not the one configured.
    #[error("plugin {plugin}: sha256 mismatch: expected {expected}, the file has {actual}")]
    HashMismatch {
        /// The plugin.
        plugin: String,
        /// The configured hash (lowercase hex).
        expected: String,
        /// The file's hash (lowercase hex).
        actual: String,
    },
    /// The bytes are not WebAssembly at all.
    #[error("plugin {plugin}: not a webassembly file ({reason})")]
    NotWasm {
        /// The plugin.
        plugin: String,
        /// What the first bytes look like.
        reason: String,
    },
    /// The bytes are a core WebAssembly module, not a component.
    #[error(
        "plugin {plugin}: a core webassembly module, not a component: build it with \
         `edgerep plugin build DIR -o FILE` (Rust, TinyGo or Go: it makes the component, with the \
         WASI adapter a Go module needs, and embeds params.toml)"
    )]
    CoreModule {
        /// The plugin.
        plugin: String,
    },
    /// The config's parameters do not fit what the plugin declares (or its declaration is
    /// unreadable).
    #[error("plugin {plugin}: {reason}")]
    Params {
        /// The plugin.
        plugin: String,
        /// What is wrong, with what the plugin declares.
        reason: String,
    },
    /// The component does not compile (invalid, or uses features the engine does not enable).
    #[error("plugin {plugin}: invalid component: {message}")]
    Compile {
        /// The plugin.
        plugin: String,
        /// wasmtime's message.
        message: String,
    },
    /// The component imports something other than `edgerep:plugin/host`, `edgerep:plugin/types`
    /// and WASI.
    #[error(
        "plugin {plugin}: refused imports {refused:?}: a plugin may import only \
         edgerep:plugin/host, edgerep:plugin/types and wasi:*"
    )]
    RefusedImports {
        /// The plugin.
        plugin: String,
        /// The refused import names.
        refused: Vec<String>,
    },
    /// The component was built against another version of the contract (`wit/plugin.wit`) than
    /// this edgerep serves.
    #[error(
        "plugin {plugin}: built against {found}, but this edgerep serves edgerep:plugin@{serves}: \
         rebuild the plugin with this edgerep's SDK (`edgerep plugin build`)"
    )]
    OtherContract {
        /// The plugin.
        plugin: String,
        /// The contract import it names, with its version.
        found: String,
        /// The contract version this edgerep serves.
        serves: &'static str,
    },
    /// The component's exports match neither world, or their types do not match the WIT.
    #[error(
        "plugin {plugin}: no plugin world: {reason} (its exports: {exports:?}; the transform \
         world needs the function export `transform`, the resolver world `resolve`, as in \
         wit/plugin.wit)"
    )]
    World {
        /// The plugin.
        plugin: String,
        /// The component's exports.
        exports: Vec<String>,
        /// What does not match.
        reason: String,
    },
    /// An import could not be satisfied (say a WASI interface this host does not provide), or
    /// has the wrong type.
    #[error("plugin {plugin}: cannot link: {message}")]
    Link {
        /// The plugin.
        plugin: String,
        /// wasmtime's message, naming the import.
        message: String,
    },
    /// The component cannot be instantiated under its limits (its start code traps or runs out
    /// of fuel, its initial memory is over the cap, it needs more instances than allowed): every
    /// call would fail.
    #[error(
        "plugin {plugin}: cannot be instantiated under its limits, so every call would fail: {failure}"
    )]
    Instantiate {
        /// The plugin.
        plugin: String,
        /// What instantiating it gave.
        failure: crate::Failure,
    },
}
