//! Names the commit this binary is built from (`EDGEREP_BUILD_COMMIT`): status, metrics and
//! `--version` report it, so an operator can tell which build runs at each site. Outside a git
//! checkout (a source archive) it is `unknown`. Uncommitted changes are not noted.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=EDGEREP_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Run again when HEAD moves: a new commit on the branch, or another branch checked out.
    // (Without a checkout, once: nothing names a file to watch.)
    println!("cargo:rerun-if-changed=build.rs");
    if commit.is_some() {
        let mut watched = vec!["HEAD".to_owned()];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(branch);
        }
        watched.push("packed-refs".to_owned());
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name])
                && std::path::Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
