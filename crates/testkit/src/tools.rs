//! The repository and the external tools tests drive.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root directory (the workspace root).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The path of a tool, or a failure naming the Debian package that has it.
/// nginx lives in /usr/sbin, which is not on every user's PATH.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install the Debian package `{package}` \
                 (apt-get install {package}), or run scripts/test.sh which does"
            )
        })
}

/// Runs a command to completion and fails with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repository_and_its_tools() {
        assert!(repo_root().join("Cargo.lock").is_file());
        assert!(repo_root().join("scripts/cluster.sh").is_file());
        let sh = tool("sh", "dash");
        let out = run_ok(Command::new(sh).args(["-c", "echo hi"]));
        assert_eq!(out.stdout, b"hi\n");
    }

    #[test]
    #[should_panic(expected = "install the Debian package `no-such-package`")]
    fn a_missing_tool_names_its_package() {
        tool("banter-no-such-tool", "no-such-package");
    }

    #[test]
    #[should_panic(expected = "failed")]
    fn a_failing_command_fails() {
        run_ok(Command::new(tool("sh", "dash")).args(["-c", "exit 3"]));
    }
}
