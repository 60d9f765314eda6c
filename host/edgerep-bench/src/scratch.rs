//! A benchmark's temporary directory and node processes, cleaned up when it is interrupted.
//!
//! A bench stopped by SIGINT or SIGTERM (Ctrl-C, `timeout`) would otherwise leave its stores
//! (gigabytes) in the temporary directory and its `edgerep run` children running: the signal
//! ends the process before any `Drop` runs. The first [`dir`] installs a watcher thread that, on
//! either signal, kills the registered children, removes the registered directories and exits
//! with 128 + the signal's number. (SIGKILL cannot be caught; nothing is done then.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// What to clean up on a signal: directories and child process ids.
static LEFT: Mutex<(BTreeSet<PathBuf>, BTreeSet<u32>)> =
    Mutex::new((BTreeSet::new(), BTreeSet::new()));
static WATCH: Once = Once::new();

/// A temporary directory named `prefix…`, removed when dropped or when the bench is interrupted.
pub(crate) struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        left().0.remove(self.0.path());
    }
}

/// A new scratch directory (the temporary directory's, named `prefix…`).
pub(crate) fn dir(prefix: &str) -> std::io::Result<ScratchDir> {
    watch_signals();
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    left().0.insert(dir.path().to_path_buf());
    Ok(ScratchDir(dir))
}

/// Marks a child process to be killed if the bench is interrupted.
pub(crate) fn child_started(pid: u32) {
    left().1.insert(pid);
}

/// The child has been waited for: its id may be reused, so it is no longer ours to kill.
pub(crate) fn child_ended(pid: u32) {
    left().1.remove(&pid);
}

fn left() -> std::sync::MutexGuard<'static, (BTreeSet<PathBuf>, BTreeSet<u32>)> {
    LEFT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watch_signals() {
    WATCH.call_once(|| {
        let watcher = std::thread::Builder::new()
            .name("bench-signals".into())
            .spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                else {
                    return;
                };
                let number = rt.block_on(async {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return None;
                    };
                    tokio::select! {
                        _ = int.recv() => Some(2),
                        _ = term.recv() => Some(15),
                    }
                });
                if let Some(number) = number {
                    clean_up_and_exit(number);
                }
            });
        if let Err(e) = watcher {
            eprintln!("bench: no signal watcher ({e}): an interrupted run leaves its files");
        }
    });
}

fn clean_up_and_exit(signal: i32) -> ! {
    let (dirs, children) = std::mem::take(&mut *left());
    for pid in children {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    eprintln!(
        "bench: interrupted; removed {} scratch director{}",
        dirs.len(),
        if dirs.len() == 1 { "y" } else { "ies" }
    );
    std::process::exit(128 + signal)
}
