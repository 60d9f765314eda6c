//! Why a plugin call failed, classified from the error wasmtime returned (never from its text).

use std::fmt;

use crate::limits::MemoryLimitHit;

/// A failed plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for logs and dead letters: the guest's own message for [`FailureKind::PluginError`].
    pub message: String,
    /// Fuel the call used before it failed (the budget, for [`FailureKind::OutOfFuel`]).
    pub fuel_used: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Failure {}

/// The kinds of [`Failure`]. Every kind but [`FailureKind::Deadline`],
/// [`FailureKind::StackOverflow`] and [`FailureKind::HostOutOfMemory`]
/// ([`FailureKind::depends_on_machine`]) is deterministic: the same plugin, input, parameters and
/// limits give the same kind on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The call used its whole fuel budget.
    OutOfFuel,
    /// The instance asked for more memory than [`crate::Limits::memory_bytes`].
    MemoryLimit,
    /// The call ran past [`crate::Limits::deadline`] (wall clock: not deterministic).
    Deadline,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, exit, ...).
    Trap,
    /// The guest's call stack outgrew the engine's native stack limit: how deep that is depends
    /// on the machine code of the CPU the node runs on, so, like a deadline, not the same on
    /// every node.
    StackOverflow,
    /// The guest returned `err(message)`.
    PluginError,
    /// The guest returned something the host refuses (invalid CBOR, bad collection name, empty
    /// key, a put without a value, a pick out of range, too many changes or bytes, ...).
    BadOutput,
    /// The plugin does not implement the function called (a transform called on a resolver or
    /// the other way round): a mistake of the caller, not of the plugin.
    WrongWorld,
    /// A memory or table grow within the plugin's cap that this machine could not make (the OS
    /// refused the memory): it may fail on this node only.
    HostOutOfMemory,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 9] = [
        FailureKind::OutOfFuel,
        FailureKind::MemoryLimit,
        FailureKind::Deadline,
        FailureKind::Trap,
        FailureKind::StackOverflow,
        FailureKind::PluginError,
        FailureKind::BadOutput,
        FailureKind::WrongWorld,
        FailureKind::HostOutOfMemory,
    ];

    /// The kebab-case name used in logs, metrics, JSON and test vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::OutOfFuel => "out-of-fuel",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::Deadline => "deadline",
            FailureKind::Trap => "trap",
            FailureKind::StackOverflow => "stack-overflow",
            FailureKind::PluginError => "plugin-error",
            FailureKind::BadOutput => "bad-output",
            FailureKind::WrongWorld => "wrong-world",
            FailureKind::HostOutOfMemory => "host-out-of-memory",
        }
    }

    /// Whether the same call may end otherwise on another node (a deadline is wall time, a
    /// stack overflow depends on the CPU's machine code, the memory the OS grants on the
    /// machine's load): such a failure must not decide a peer's event differently here than
    /// elsewhere.
    pub fn depends_on_machine(self) -> bool {
        matches!(
            self,
            FailureKind::Deadline | FailureKind::StackOverflow | FailureKind::HostOutOfMemory
        )
    }

    /// Whether state an instance kept from earlier calls can cause this failure (a heap grown
    /// call after call, data structures that grew): a trap, out of memory, out of fuel. Not an
    /// answer (`err(message)`, an output the host refused), nor what the machine decides (the
    /// deadline, the native stack, the memory the OS grants).
    pub fn may_come_from_earlier_calls(self) -> bool {
        matches!(
            self,
            FailureKind::Trap | FailureKind::MemoryLimit | FailureKind::OutOfFuel
        )
    }

    /// The kind named `name` (the inverse of [`FailureKind::as_str`]).
    pub fn parse(name: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// While instantiating the component.
    Instantiate,
    /// While calling its export (including handing over the input and taking the result).
    Call,
}

/// Classifies an error from instantiating or calling a guest, by the types in its cause chain.
///
/// - A memory grow the store's limiter refused during the call (`refused`, or the error it
///   raised) is memory-limit, whatever the guest did afterwards: a guest that handles a failed
///   grow by aborting traps with `unreachable`, and that is still memory-limit.
/// - [`wasmtime::Trap::OutOfFuel`] is out-of-fuel, [`wasmtime::Trap::Interrupt`] (the epoch
///   deadline) is deadline, [`wasmtime::Trap::StackOverflow`] is stack-overflow, every other
///   trap code is trap, and so is a WASI `exit`.
/// - Any other error during a call was raised by the host while taking data from the guest: a
///   result (or an import's argument) that is malformed in the canonical ABI (a pointer out of
///   bounds, text that is not UTF-8) or larger than the store's hostcall data budget. The host
///   refuses what the guest handed over: bad-output.
pub(crate) fn classify(
    error: &wasmtime::Error,
    refused: Option<&MemoryLimitHit>,
    phase: Phase,
) -> (FailureKind, String) {
    if let Some(failed) = error.downcast_ref::<crate::limits::HostGrowFailed>() {
        return (FailureKind::HostOutOfMemory, failed.to_string());
    }
    if let Some(impossible) = error.downcast_ref::<crate::limits::GrowImpossible>() {
        return (FailureKind::MemoryLimit, impossible.to_string());
    }
    if let Some(hit) = error.downcast_ref::<MemoryLimitHit>().or(refused) {
        return (FailureKind::MemoryLimit, hit.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        let kind = match trap {
            wasmtime::Trap::OutOfFuel => FailureKind::OutOfFuel,
            wasmtime::Trap::Interrupt => FailureKind::Deadline,
            wasmtime::Trap::StackOverflow => FailureKind::StackOverflow,
            _ => FailureKind::Trap,
        };
        return (kind, describe(error));
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return (FailureKind::Trap, format!("plugin called exit({})", exit.0));
    }
    // The host could not map or allocate (wasmtime reserving a memory's address space when
    // instantiating, a table's entries when growing): the machine's doing (its address space,
    // the OS's commit limit), not the same on every node, like a grow the OS refused.
    let out_of_memory = |e: &(dyn std::error::Error + 'static)| {
        e.is::<wasmtime::OutOfMemory>()
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                io.kind() == std::io::ErrorKind::OutOfMemory || io.raw_os_error() == Some(12) // ENOMEM
            })
    };
    if error.downcast_ref::<wasmtime::OutOfMemory>().is_some() || error.chain().any(out_of_memory) {
        return (FailureKind::HostOutOfMemory, describe(error));
    }
    // The instance's table of WASI handles is full: a bound of the plugin's like its memory's
    // (the same on every node), which a reused instance may have neared in earlier calls.
    let table_full = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        )
    };
    if error.chain().any(table_full) {
        return (
            FailureKind::MemoryLimit,
            format!(
                "the plugin holds more WASI handles (pollables, streams) at once than an instance may ({}): {}",
                crate::wasi::MAX_HANDLES,
                describe(error)
            ),
        );
    }
    match phase {
        Phase::Call => (
            FailureKind::BadOutput,
            format!("the host refused data from the plugin: {}", describe(error)),
        ),
        Phase::Instantiate => (FailureKind::Trap, describe(error)),
    }
}

/// The error's messages, outermost first, joined by ": ", with the wasm backtrace (if wasmtime
/// attached one) on the following lines.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let mut message = String::new();
    let mut backtrace = None;
    for cause in error.chain() {
        let text = cause.to_string();
        if text.starts_with("error while executing at wasm backtrace") {
            backtrace = Some(text);
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    if let Some(backtrace) = backtrace {
        message.push('\n');
        message.push_str(backtrace.trim_end());
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_cause_chain() {
        let trap = |t: wasmtime::Trap| wasmtime::Error::new(t).context("while calling transform");
        let hit = MemoryLimitHit::new(2 << 20, 2 << 20, 1 << 20);
        let cases = [
            (
                trap(wasmtime::Trap::OutOfFuel),
                None,
                Phase::Call,
                FailureKind::OutOfFuel,
            ),
            (
                trap(wasmtime::Trap::Interrupt),
                None,
                Phase::Call,
                FailureKind::Deadline,
            ),
            (
                trap(wasmtime::Trap::StackOverflow),
                None,
                Phase::Call,
                FailureKind::StackOverflow,
            ),
            // The guest aborting after a refused grow is still memory-limit.
            (
                trap(wasmtime::Trap::UnreachableCodeReached),
                Some(&hit),
                Phase::Call,
                FailureKind::MemoryLimit,
            ),
            (
                wasmtime::Error::new(hit),
                None,
                Phase::Instantiate,
                FailureKind::MemoryLimit,
            ),
            (
                wasmtime::Error::new(wasmtime_wasi::I32Exit(3)),
                None,
                Phase::Call,
                FailureKind::Trap,
            ),
            (
                wasmtime::Error::msg("list pointer/length out of bounds of memory"),
                None,
                Phase::Call,
                FailureKind::BadOutput,
            ),
            (
                wasmtime::Error::msg("instance limit reached"),
                None,
                Phase::Instantiate,
                FailureKind::Trap,
            ),
            // The host's own mapping or allocation failed (as wasmtime 48 reports them): the
            // machine's, whatever the phase (it was trap or bad-output, which the failure
            // policy then decided on this node alone).
            (
                wasmtime::Error::new(std::io::Error::from_raw_os_error(12))
                    .context("mmap failed to reserve 0x100000000 bytes"),
                None,
                Phase::Instantiate,
                FailureKind::HostOutOfMemory,
            ),
            (
                wasmtime::Error::new(wasmtime::OutOfMemory::new(1 << 20)),
                None,
                Phase::Call,
                FailureKind::HostOutOfMemory,
            ),
            // Another host error is not taken for the machine's memory.
            (
                wasmtime::Error::new(std::io::Error::from_raw_os_error(13))
                    .context("mmap failed to reserve 0x100000000 bytes"),
                None,
                Phase::Instantiate,
                FailureKind::Trap,
            ),
        ];
        for (error, refused, phase, expected) in cases {
            let (kind, message) = classify(&error, refused, phase);
            assert_eq!(kind, expected, "{error:?}: {message}");
        }
        let (_, message) = classify(&trap(wasmtime::Trap::OutOfFuel), None, Phase::Call);
        assert!(
            message.starts_with("while calling transform: "),
            "{message}"
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FailureKind::parse("invalid-output"), None);
    }
}
