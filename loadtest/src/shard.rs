//! Splitting a run over processes, since one process may hold at most its
//! open-files hard limit of sockets. The parent re-runs this binary with
//! `--shard I --procs K`; each child does its slice and talks to the parent
//! in lines: the child prints `READY {json}` once its sockets are open,
//! waits for `GO` on stdin, then prints `RESULT {json}` and exits.

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// File descriptors a process keeps for itself besides sockets.
const FD_RESERVE: u64 = 256;

/// How many processes `connections` sockets need: `requested`, or when it is
/// 0, as many as the open-files hard limit asks for.
pub fn procs_for(connections: usize, requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    let (_, hard) = crate::procfs::raise_nofile();
    let per = hard.saturating_sub(FD_RESERVE).max(1);
    (connections as u64).div_ceil(per).max(1) as usize
}

/// The slice of `0..total` that shard `index` of `count` takes.
pub fn slice(total: usize, index: usize, count: usize) -> Range<usize> {
    let count = count.max(1);
    (total * index / count)..(total * (index + 1) / count)
}

/// Child side: tells the parent this shard is ready, with `part`.
pub fn ready(part: &impl Serialize) -> anyhow::Result<()> {
    println!("READY {}", serde_json::to_string(part)?);
    Ok(())
}

/// Child side: waits for the parent's `GO`; false when stdin closed first.
pub async fn wait_go() -> bool {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    matches!(lines.next_line().await, Ok(Some(l)) if l.trim() == "GO")
}

/// Child side: the shard's result.
pub fn result(part: &impl Serialize) -> anyhow::Result<()> {
    println!("RESULT {}", serde_json::to_string(part)?);
    Ok(())
}

/// Parent side: the running children.
#[derive(Debug)]
pub struct Children {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    stdouts: Vec<Lines<BufReader<ChildStdout>>>,
}

impl Children {
    /// Starts `count` copies of this binary with this process's arguments,
    /// each told its shard.
    pub fn spawn(count: usize) -> anyhow::Result<Children> {
        let exe = std::env::current_exe().context("cannot find my own binary")?;
        let args = child_args(std::env::args().skip(1));
        let mut out = Children {
            children: Vec::new(),
            stdins: Vec::new(),
            stdouts: Vec::new(),
        };
        for i in 0..count {
            let mut child = Command::new(&exe)
                .args(&args)
                .args(["--procs", &count.to_string(), "--shard", &i.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a shard process")?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("shard process without pipes");
            };
            out.stdins.push(stdin);
            out.stdouts.push(BufReader::new(stdout).lines());
            out.children.push(child);
        }
        Ok(out)
    }

    /// Waits for every child's line tagged `tag`, bounded by `timeout`.
    pub async fn collect<T: DeserializeOwned>(
        &mut self,
        tag: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let mut parts = Vec::new();
        for (i, lines) in self.stdouts.iter_mut().enumerate() {
            let line = tokio::time::timeout(timeout, async {
                while let Some(l) = lines.next_line().await? {
                    if let Some(json) = l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                        return Ok::<_, anyhow::Error>(json.to_owned());
                    }
                }
                anyhow::bail!("shard {i} exited before {tag}")
            })
            .await
            .with_context(|| format!("shard {i}: no {tag} within {timeout:?}"))??;
            parts.push(serde_json::from_str(&line).with_context(|| format!("shard {i} {tag}"))?);
        }
        Ok(parts)
    }

    /// Tells every child to go on.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        for s in &mut self.stdins {
            s.write_all(b"GO\n").await?;
            s.flush().await?;
        }
        Ok(())
    }

    /// Waits for every child to exit (bounded; then they are killed).
    pub async fn finish(mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(30), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// This process's arguments without `--procs`, `--shard` and `--json` (the
/// parent sets the first two and writes the result itself).
fn child_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if ["--procs", "--shard", "--json"].contains(&a.as_str()) {
            skip_next = true;
            continue;
        }
        if a.starts_with("--procs=") || a.starts_with("--shard=") || a.starts_with("--json=") {
            continue;
        }
        out.push(a);
    }
    if !out.iter().any(|a| a == "--quiet") {
        out.push("--quiet".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_everything_once() {
        let all: Vec<usize> = (0..3).flat_map(|i| slice(10, i, 3)).collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn child_args_drop_what_the_parent_sets() {
        let a = child_args(
            ["idle", "-n", "5", "--procs", "2", "--json=x", "--json", "y"]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(a, ["idle", "-n", "5", "--quiet"]);
    }
}
