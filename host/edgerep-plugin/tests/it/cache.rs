//! The compiled-component cache: one file per component and engine; later loads do not compile.

use std::fs;
use std::path::Path;

use edgerep_plugin::Runtime;

use crate::common::{limits, load, order};

fn cwasm_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_second_load_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nested/cache");
    let runtime = Runtime::new(Some(&cache)).unwrap();
    let first = load(&runtime, "passthrough", limits(10_000_000, 16 << 20), &[]);
    assert_eq!((runtime.compilations(), runtime.cache_hits()), (1, 0));
    let files = cwasm_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with(first.sha256()) && files[0].ends_with(".cwasm"),
        "{files:?}"
    );
    // Native code the node runs: only its own user may write the cache, or read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join(&files[0])), 0o600);
    // A cache directory others could write is tightened at the next start.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    drop(Runtime::new(Some(&cache)).unwrap());
    assert_eq!(mode(&cache), 0o700);

    let second = load(&runtime, "passthrough", limits(10_000_000, 16 << 20), &[]);
    assert_eq!((runtime.compilations(), runtime.cache_hits()), (1, 1));
    assert_eq!(cwasm_files(&cache), files);

    // A new runtime (a restart) finds it too, and the cached component runs the same.
    let restarted = Runtime::new(Some(&cache)).unwrap();
    let third = load(&restarted, "passthrough", limits(10_000_000, 16 << 20), &[]);
    assert_eq!((restarted.compilations(), restarted.cache_hits()), (0, 1));
    let expected = first.transform(&order("o-1"), true).unwrap();
    assert_eq!(second.transform(&order("o-1"), true).unwrap(), expected);
    assert_eq!(third.transform(&order("o-1"), true).unwrap(), expected);
    assert_eq!(third.metrics().fuel_total, first.metrics().fuel_total);

    // A corrupted file is refused (checksum), recompiled and rewritten.
    let path = cache.join(&files[0]);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let fourth = load(&restarted, "passthrough", limits(10_000_000, 16 << 20), &[]);
    assert_eq!((restarted.compilations(), restarted.cache_hits()), (1, 1));
    assert_eq!(fourth.transform(&order("o-1"), true).unwrap(), expected);
    assert_eq!(cwasm_files(&cache), files);
    let fifth = load(&restarted, "passthrough", limits(10_000_000, 16 << 20), &[]);
    assert_eq!((restarted.compilations(), restarted.cache_hits()), (1, 2));
    drop(fifth);

    // Another component gets its own file.
    load(&restarted, "redact", limits(10_000_000, 16 << 20), &[]);
    assert_eq!(cwasm_files(&cache).len(), 2);
}

/// A node killed while it wrote a compiled plugin (an out-of-memory loop, say) left its
/// temporary file, megabytes, each time: a runtime removes those of processes no longer
/// running, and its own process's from before it started (the first process of a container
/// has the same id every time), and keeps those a running process may still be writing.
#[test]
fn temporaries_a_killed_process_left_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let gone = cache.join("aa.tmp.999999999.0");
    let own_old = cache.join(format!("bb.tmp.{}.3", std::process::id()));
    let running = cache.join("cc.tmp.1.0");
    let kept = cache.join("dd.txt");
    for p in [&gone, &own_old, &running, &kept] {
        fs::write(p, b"partial").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&own_old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    drop(Runtime::new(Some(&cache)).unwrap());
    assert!(!gone.exists(), "a dead process's temporary is removed");
    assert!(
        !own_old.exists(),
        "this process's from before it started is removed"
    );
    assert!(running.exists(), "a running process's is kept");
    assert!(kept.exists(), "other files are kept");
}

/// An upgrade of edgerep compiles every plugin again (another engine): the components the
/// earlier build compiled are never loaded again, megabytes each, and are removed at the
/// runtime's start; this engine's stay.
#[test]
fn components_of_other_engines_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let runtime = Runtime::new(Some(&cache)).unwrap();
    drop(load(
        &runtime,
        "passthrough",
        limits(10_000_000, 16 << 20),
        &[],
    ));
    let ours = cwasm_files(&cache);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let earlier = cache.join(format!(
        "{}-00000000000000000000000000000000.cwasm",
        "ab".repeat(32)
    ));
    fs::write(&earlier, b"an earlier build's").unwrap();
    drop(Runtime::new(Some(&cache)).unwrap());
    assert!(!earlier.exists(), "another engine's component is removed");
    assert_eq!(cwasm_files(&cache), ours, "this engine's stays");
}
