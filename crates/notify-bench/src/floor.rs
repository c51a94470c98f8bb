//! `send-floor`: what the kernel alone charges for a fan-out on this machine, so the gateway's
//! steady-rate figures can be given as a multiple of a physical limit.
//!
//! One round writes one `--frame-bytes` WebSocket text frame (a 2- or 4-byte header and a
//! JSON-like body, the size of a real notification) to each socket of one group of the
//! `--clients` loopback TCP sockets (`--floor-groups`, default 1: all of them; 8 is a gateway's
//! fan-out over 8 regions, one region per message), with plain blocking `write(2)` calls and
//! nothing else: no runtime, no wake-ups, no queues. Rounds run at `--rate` per second for
//! `--duration`, the groups in turn, once from one thread and once from two (each owning half
//! of every group). CPU per send depends on the send rate (at a low rate every round starts
//! with cold caches), so a gateway's figures are compared with the floor at its own pattern:
//! the same clients, groups and rate. The receiving ends live in a child process (this
//! binary again, as a sink on a runtime that reads everything and counts the bytes), as the
//! browsers' sockets live outside the gateway.
//!
//! Reported per thread count: CPU of this process per send (user + system, which on loopback
//! includes the receiver's TCP work done in the sender's context, exactly as for a gateway),
//! and the fan-out time of a round (first write to last write) at p50/p99 — the floor for a
//! gateway's p99 at the same rate. The sink's byte count must equal every byte sent, or the run
//! fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use crate::cli::Args;
use crate::procstat;
use crate::report::{quantile, round3, Outcome};

/// Thread counts every run measures, in this order.
const THREAD_COUNTS: [usize; 2] = [1, 2];

/// Longest a single `write` may block before the run is declared broken (the sink stopped
/// reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the sender side and returns its report.
pub fn run(args: &Args) -> Result<ExitCode> {
    let frame = frame_of(args.frame_bytes)?;
    let rounds = args.steady_messages();
    let sink = Sink::start(args.clients)?;
    let mut sockets = connect(sink.addr, args.clients)?;
    let mut report = Map::new();
    report.insert("scenario".into(), json!("send-floor"));
    report.insert("clients".into(), json!(args.clients));
    report.insert("frame_bytes".into(), json!(frame.len()));
    report.insert("rate".into(), json!(args.rate));
    report.insert("rounds".into(), json!(rounds));
    let groups = usize::try_from(args.floor_groups).context("--floor-groups")?;
    report.insert("groups".into(), json!(groups));
    let mut runs = Vec::new();
    let mut sent_bytes = 0u64;
    for threads in THREAD_COUNTS {
        let sink_before = procstat::sample(&sink.pid()).ok();
        let pattern = Pattern {
            threads,
            groups,
            rounds,
            rate: args.rate,
        };
        let (measured, returned) = send_rounds(sockets, &frame, pattern)?;
        sent_bytes += frame.len() as u64 * measured.sends;
        sockets = returned;
        let sink_after = procstat::sample(&sink.pid()).ok();
        let sink_cpu = sink_before
            .zip(sink_after)
            .map(|(before, after)| after.cpu_secs - before.cpu_secs);
        eprintln!(
            "send-floor: {} sockets in {groups} group(s) x {rounds} rounds of {} B from {threads} thread(s): {:.3} us CPU/send; round p50 {:.3} ms, p99 {:.3} ms; sink CPU {}",
            args.clients,
            frame.len(),
            measured.cpu_per_send_us,
            measured.round_p50_ms,
            measured.round_p99_ms,
            sink_cpu.map_or_else(|| "?".into(), |cpu| format!("{cpu:.3} s")),
        );
        let mut entry = measured.to_json();
        entry.insert("threads".into(), json!(threads));
        entry.insert("sink_cpu_secs".into(), json!(sink_cpu.map(round3)));
        runs.push(Value::Object(entry));
    }
    drop(sockets);
    let (received_bytes, silent_sockets) = sink.finish()?;
    report.insert("runs".into(), Value::Array(runs));
    report.insert("sent_bytes".into(), json!(sent_bytes));
    report.insert("received_bytes".into(), json!(received_bytes));
    report.insert("silent_sockets".into(), json!(silent_sockets));
    let mut failures = Vec::new();
    if received_bytes != sent_bytes {
        failures.push(format!(
            "the sink received {received_bytes} bytes of {sent_bytes} sent"
        ));
    }
    // Every group is written at least once when there are as many rounds as groups.
    if rounds >= groups as u64 && silent_sockets > 0 {
        failures.push(format!(
            "{silent_sockets} of {} sockets were never written to",
            args.clients
        ));
    }
    Ok(Outcome::new(report, failures).finish(false))
}

/// A server-to-client WebSocket text frame of `total` bytes (header included): the shape of
/// what a gateway writes per delivery.
fn frame_of(total: usize) -> Result<Vec<u8>> {
    ensure!(
        (16..=65_535).contains(&total),
        "--frame-bytes must be 16..=65535"
    );
    let header: Vec<u8> = if total - 2 <= 125 {
        vec![0x81, u8::try_from(total - 2).context("frame length")?]
    } else {
        let body = u16::try_from(total - 4).context("frame length")?;
        let [high, low] = body.to_be_bytes();
        vec![0x81, 126, high, low]
    };
    let mut frame = header;
    let body_len = total - frame.len();
    frame.extend(std::iter::repeat_n(b'x', body_len));
    Ok(frame)
}

/// Opens `count` loopback connections to the sink, blocking, with Nagle off (as the gateway).
fn connect(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    ensure!(
        limit >= count as u64 + 64,
        "--clients {count} needs about {} open files, but the limit is {limit}",
        count + 64
    );
    (0..count)
        .map(|n| {
            let stream = TcpStream::connect(addr)
                .with_context(|| format!("connecting socket {n} to the sink at {addr}"))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            stream
                .set_write_timeout(Some(WRITE_TIMEOUT))
                .context("setting the write timeout")?;
            Ok(stream)
        })
        .collect()
}

/// What one thread count measured.
#[derive(Debug)]
struct Measured {
    cpu_per_send_us: f64,
    round_p50_ms: f64,
    round_p99_ms: f64,
    round_max_ms: f64,
    cpu_secs: f64,
    sends: u64,
}

impl Measured {
    fn to_json(&self) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "cpu_per_send_us": round3(self.cpu_per_send_us),
            "round_p50_ms": round3(self.round_p50_ms),
            "round_p99_ms": round3(self.round_p99_ms),
            "round_max_ms": round3(self.round_max_ms),
            "cpu_secs": round3(self.cpu_secs),
            "sends": self.sends,
        }) else {
            unreachable!("json! of an object literal is an object")
        };
        map
    }
}

/// How one measurement sends: from how many threads, over how many groups, how many rounds
/// at what rate.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    threads: usize,
    groups: usize,
    rounds: u64,
    rate: f64,
}

/// Sends `rounds` rounds at `rate` per second from `threads` threads, each owning an equal
/// share of every group of `sockets`, round n writing to group n mod `groups`; returns the
/// measurement and the sockets.
fn send_rounds(
    sockets: Vec<TcpStream>,
    frame: &[u8],
    pattern: Pattern,
) -> Result<(Measured, Vec<TcpStream>)> {
    let Pattern {
        threads,
        groups,
        rounds,
        rate,
    } = pattern;
    let total = sockets.len();
    let mut shares: Vec<Vec<Vec<TcpStream>>> = (0..threads)
        .map(|_| (0..groups).map(|_| Vec::new()).collect())
        .collect();
    for (n, socket) in sockets.into_iter().enumerate() {
        shares[n % threads][(n / threads) % groups].push(socket);
    }
    let sends = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(Barrier::new(threads + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let failed_writes = Arc::new(AtomicU64::new(0));
    let frame: Arc<[u8]> = Arc::from(frame);
    let workers: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let (start, done, stop) = (Arc::clone(&start), Arc::clone(&done), Arc::clone(&stop));
            let (frame, failed_writes) = (Arc::clone(&frame), Arc::clone(&failed_writes));
            let sends = Arc::clone(&sends);
            std::thread::spawn(move || {
                let mut round = 0;
                loop {
                    start.wait();
                    if stop.load(Ordering::Acquire) {
                        return share;
                    }
                    let groups = share.len();
                    let group = &mut share[round % groups];
                    for socket in group.iter_mut() {
                        if socket.write_all(&frame).is_err() {
                            failed_writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sends.fetch_add(group.len() as u64, Ordering::Relaxed);
                    round += 1;
                    done.wait();
                }
            })
        })
        .collect();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut round_times = Vec::with_capacity(usize::try_from(rounds).unwrap_or(0));
    let cpu_before = procstat::sample("self")?.cpu_secs;
    let began = Instant::now();
    for round in 0..rounds {
        let due = began + interval.mul_f64(round as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let round_began = Instant::now();
        start.wait();
        done.wait();
        round_times.push(round_began.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_secs = procstat::sample("self")?.cpu_secs - cpu_before;
    stop.store(true, Ordering::Release);
    start.wait();
    let mut sockets = Vec::with_capacity(total);
    for worker in workers {
        sockets.extend(
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a sending thread panicked"))?
                .into_iter()
                .flatten(),
        );
    }
    let failed = failed_writes.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} writes failed or blocked for {WRITE_TIMEOUT:?} (the sink stopped reading)");
    }
    round_times.sort_by(f64::total_cmp);
    let sends = sends.load(Ordering::Relaxed);
    let measured = Measured {
        cpu_per_send_us: cpu_secs * 1e6 / (sends as f64).max(1.0),
        sends,
        round_p50_ms: quantile(&round_times, 0.50).unwrap_or(0.0),
        round_p99_ms: quantile(&round_times, 0.99).unwrap_or(0.0),
        round_max_ms: round_times.last().copied().unwrap_or(0.0),
        cpu_secs,
    };
    Ok((measured, sockets))
}

/// The child process holding the receiving ends.
struct Sink {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Sink {
    /// Starts `notify-bench send-floor --floor-sink` and reads the address it listens on.
    fn start(clients: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .args(["send-floor", "--floor-sink", "--clients"])
            .arg(clients.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the sink process")?;
        let mut stdout = BufReader::new(child.stdout.take().context("sink stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("reading the sink's address")?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("the sink printed {line:?}, not an address"))?;
        Ok(Sink {
            child,
            stdout,
            addr,
        })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Closes the sink's stdin (it finishes once every connection has ended) and returns the
    /// bytes it received and how many of its connections received nothing.
    fn finish(mut self) -> Result<(u64, u64)> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading the sink's byte count")?;
        let status = self.child.wait().context("waiting for the sink")?;
        ensure!(status.success(), "the sink exited with {status}");
        let counts: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("the sink printed {line:?}, not two counts"))?;
        match counts[..] {
            [received, silent] => Ok((received, silent)),
            _ => bail!("the sink printed {line:?}, not two counts"),
        }
    }
}

/// The sink's side: accepts `clients` connections, reads each to its end, then prints the
/// total byte count and the number of connections that received nothing. Prints its
/// listening address first.
pub fn run_sink(clients: usize) -> Result<ExitCode> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
    println!("{}", listener.local_addr().context("sink address")?);
    std::io::stdout().flush().context("flushing stdout")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the sink's runtime")?;
    let received = runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (mut stream, _) = listener.accept().await?;
            readers.spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0u8; 4096];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) => return total,
                        Ok(read) => total += read as u64,
                        Err(error) => {
                            eprintln!("send-floor sink: a connection failed: {error}");
                            return total;
                        }
                    }
                }
            });
        }
        let (mut received, mut silent) = (0u64, 0u64);
        while let Some(total) = readers.join_next().await {
            let total = total.unwrap_or(0);
            received += total;
            silent += u64::from(total == 0);
        }
        Ok::<(u64, u64), std::io::Error>((received, silent))
    })?;
    // Wait for the sender to say it is done (stdin closed) before answering.
    let mut rest = Vec::new();
    std::io::stdin()
        .read_to_end(&mut rest)
        .context("waiting for stdin to close")?;
    let (received, silent) = received;
    println!("{received} {silent}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size_and_a_valid_header() {
        let small = frame_of(100).unwrap();
        assert_eq!(small.len(), 100);
        assert_eq!(&small[..2], &[0x81, 98]);
        let large = frame_of(300).unwrap();
        assert_eq!(large.len(), 300);
        assert_eq!(&large[..4], &[0x81, 126, 1, 40]);
        assert!(frame_of(8).is_err());
    }
}
