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
    // Run again when HEAD moves: `logs/HEAD` takes a line at every commit, checkout or reset;
    // `HEAD` and `packed-refs` cover a repository without reflogs. (Without a checkout, once:
    // nothing names a file to watch.)
    println!("cargo:rerun-if-changed=build.rs");
    if commit.is_some() {
        let here = std::env::current_dir().unwrap_or_default();
        let git_dir = git(&["rev-parse", "--git-dir"]).map(|d| here.join(d));
        let common_dir = git(&["rev-parse", "--git-common-dir"]).map(|d| here.join(d));
        let watched = [
            git_dir.as_ref().map(|d| d.join("HEAD")),
            git_dir.as_ref().map(|d| d.join("logs").join("HEAD")),
            common_dir.as_ref().map(|d| d.join("packed-refs")),
        ];
        for path in watched.into_iter().flatten() {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
