//! The client processes of a `scale` run: `--client-processes` copies of this binary in
//! `scale-worker` mode, each given its share of `--clients` and every gateway as `--targets`;
//! killed when dropped. Each command goes to every process and each answers one line.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use notify_proto::StreamId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};
use tokio::time::Instant;

use crate::cli::Args;
use crate::fleet::Fleet;
use crate::scale::wire::{Command, Deliveries, Event};

/// One client process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Every client process of the run.
pub struct Workers {
    workers: Vec<Worker>,
}

/// The processes' first connections, summed.
#[derive(Debug, Default)]
pub struct Connected {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

/// The processes' clients now, summed.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: u64,
    pub reconnects: u64,
}

/// What the processes' clients still miss, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Messages not received yet, over every client.
    pub missing: u64,
    /// The latest delivery to any client, wall clock ns.
    pub last_delivery_ns: u64,
}

/// `--clients` split over `processes`: the first ones take one more when it does not divide.
pub fn shares(clients: usize, processes: usize) -> Vec<usize> {
    (0..processes)
        .map(|index| clients / processes + usize::from(index < clients % processes))
        .collect()
}

impl Workers {
    /// Starts the processes: this executable with `scale-worker`, the run's client flags,
    /// its share and first client number, every gateway and every region's epoch id.
    pub fn spawn(args: &Args, fleet: &Fleet, epochs: &[StreamId]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let targets: Vec<String> = fleet
            .nodes
            .iter()
            .map(|node| node.addr.to_string())
            .collect();
        let regions: Vec<&str> = args.regions.iter().map(|region| region.as_str()).collect();
        let epochs: Vec<String> = epochs.iter().map(ToString::to_string).collect();
        let mut workers = Vec::new();
        let mut first = 0;
        for share in shares(args.clients, args.client_processes) {
            let mut command = Process::new(&exe);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("NOTIFY_BENCH_") {
                    command.env_remove(key);
                }
            }
            command
                .arg("scale-worker")
                .arg(format!("--clients={share}"))
                .arg(format!("--worker-first-client={first}"))
                .arg(format!("--targets={}", targets.join(",")))
                .arg(format!("--regions={}", regions.join(",")))
                .arg(format!("--epochs={}", epochs.join(",")))
                .arg(format!(
                    "--connect-concurrency={}",
                    args.connect_concurrency
                ))
                .arg(format!("--source-ips={}", args.source_ips))
                .arg(format!(
                    "--reconnect-delay={}ms",
                    args.reconnect_delay.as_millis()
                ))
                .arg(format!("--reconnect-attempts={}", args.reconnect_attempts))
                .arg(format!("--threads={}", args.threads))
                .arg(format!("--timeout={}s", args.timeout.as_secs()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .with_context(|| format!("starting {} scale-worker", exe.display()))?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker {
                child,
                stdin,
                stdout,
            });
            first += share;
        }
        Ok(Workers { workers })
    }

    /// Waits for every process's first connections.
    pub async fn connected(&mut self, deadline: Instant) -> Result<Connected> {
        let mut total = Connected::default();
        for index in 0..self.workers.len() {
            match self.read(index, deadline).await? {
                Event::Connected { ok, failed, errors } => {
                    total.ok += ok;
                    total.failed += failed;
                    total.errors.extend(errors.into_iter().take(3));
                }
                other => bail!("client process {index}: expected `connected`, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Connected clients and reconnects, over every process.
    pub async fn status(&mut self, deadline: Instant) -> Result<Status> {
        self.send(&Command::Status).await?;
        let mut total = Status::default();
        for index in 0..self.workers.len() {
            match self.read(index, deadline).await? {
                Event::Status {
                    connected,
                    reconnects,
                } => {
                    total.connected += connected;
                    total.reconnects += reconnects;
                }
                other => bail!("client process {index}: expected `status`, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Tells every process what was published; returns what their clients still miss.
    pub async fn progress(&mut self, counts: &[u64], deadline: Instant) -> Result<Progress> {
        self.send(&Command::Progress {
            counts: counts.to_vec(),
        })
        .await?;
        let mut total = Progress::default();
        for index in 0..self.workers.len() {
            match self.read(index, deadline).await? {
                Event::Progress {
                    missing,
                    last_delivery_ns,
                } => {
                    total.missing += missing;
                    total.last_delivery_ns = total.last_delivery_ns.max(last_delivery_ns);
                }
                other => bail!("client process {index}: expected `progress`, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Tells every process what was published; returns their deliveries, summed (what is
    /// missing now counts as lost: call it when the phase's wait is over).
    pub async fn expect(&mut self, counts: &[u64], deadline: Instant) -> Result<Deliveries> {
        self.send(&Command::Expect {
            counts: counts.to_vec(),
        })
        .await?;
        let mut total = Deliveries::default();
        for index in 0..self.workers.len() {
            match self.read(index, deadline).await? {
                Event::Delivered(deliveries) => total.add(&deliveries),
                other => bail!("client process {index}: expected `delivered`, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Asks every process to close its clients and exit; waits (bounded) for them.
    pub async fn stop(mut self, deadline: Instant) {
        if let Err(error) = self.send(&Command::Stop).await {
            eprintln!("notify-bench: warning: stopping the client processes: {error:#}");
        }
        let until = (Instant::now() + std::time::Duration::from_secs(10)).min(deadline);
        for (index, worker) in self.workers.iter_mut().enumerate() {
            match tokio::time::timeout_at(until, worker.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    eprintln!("notify-bench: warning: client process {index} ended {status}")
                }
                Ok(Err(error)) => {
                    eprintln!("notify-bench: warning: client process {index}: {error}")
                }
                Err(_) => eprintln!("notify-bench: warning: client process {index} did not exit"),
            }
        }
    }

    async fn send(&mut self, command: &Command) -> Result<()> {
        let line = serde_json::to_string(command).context("encoding a command")? + "\n";
        for (index, worker) in self.workers.iter_mut().enumerate() {
            worker
                .stdin
                .write_all(line.as_bytes())
                .await
                .with_context(|| format!("writing to client process {index}"))?;
            worker.stdin.flush().await?;
        }
        Ok(())
    }

    async fn read(&mut self, index: usize, deadline: Instant) -> Result<Event> {
        let line = tokio::time::timeout_at(deadline, self.workers[index].stdout.next_line())
            .await
            .with_context(|| format!("client process {index} did not answer before --timeout"))?
            .with_context(|| format!("reading client process {index}"))?
            .with_context(|| format!("client process {index} exited"))?;
        serde_json::from_str(&line).with_context(|| format!("client process {index} said {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(shares(10, 3), [4, 3, 3]);
        assert_eq!(shares(600, 2), [300, 300]);
        assert_eq!(shares(2, 4), [1, 1, 0, 0]);
    }
}
