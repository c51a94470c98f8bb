//! The soak's own redis-server: on a free loopback port, with append-only persistence
//! (`appendfsync always`) in a temporary directory, so the soak can restart it with its data
//! (SIGTERM, start again: the streams survive) or without (SIGTERM, delete the files, start).
//!
//! The directory is on a memory file system (`/dev/shm`) when there is one: with `appendfsync
//! always` every write waits for its `fsync`, and on a disk that other work keeps busy one
//! took long enough (seconds) to freeze Redis past the gateways' health check — a real outage
//! the soak would rightly report, but not one it made. What a restart keeps depends only on
//! the files, not on the medium.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Time redis-server has to answer after a start, and to exit after SIGTERM.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A redis-server child process. Killed when dropped; its directory is removed.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `bin` on a free loopback port with its data in a new temporary directory.
    pub async fn start(bin: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free loopback port")?
            .port();
        let dir = data_parent().join(format!(
            "notify-bench-soak-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = RedisServer {
            bin: bin.to_owned(),
            port,
            dir,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let client = redis::Client::open(self.url()).context("redis URL")?;
        let until = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Ok(Ok(mut connection)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                let pong = redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for redis-server")? {
                    bail!("redis-server exited while starting: {status}");
                }
            }
            if Instant::now() >= until {
                bail!(
                    "redis-server on port {} did not answer within {REDIS_START_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (redis-server flushes its append-only file and exits), then waits for the exit.
    async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .context("running kill -TERM")?;
            if !status.success() {
                bail!("kill -TERM {pid}: {status}");
            }
        }
        match tokio::time::timeout(REDIS_START_TIMEOUT, child.wait()).await {
            Ok(result) => {
                result.context("waiting for redis-server to exit")?;
                Ok(())
            }
            Err(_) => {
                child.kill().await.context("killing redis-server")?;
                bail!("redis-server still ran {REDIS_START_TIMEOUT:?} after SIGTERM; killed")
            }
        }
    }

    /// Stops the server and starts it again on the same port: with its data (`keep_data`),
    /// or with its directory emptied first (every stream gone, as after a failover to an
    /// empty replica).
    pub async fn restart(&mut self, keep_data: bool) -> Result<()> {
        self.stop().await?;
        if !keep_data {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
        }
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Err(error) = child.start_kill() {
                eprintln!("notify-bench: killing redis-server: {error}");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("notify-bench: removing {}: {error}", self.dir.display());
        }
    }
}

/// Where the data directories go: the memory file system when there is one, else the
/// temporary directory.
fn data_parent() -> PathBuf {
    let memory = Path::new("/dev/shm");
    if memory.is_dir() {
        memory.to_owned()
    } else {
        std::env::temp_dir()
    }
}
