//! Configuration end to end: the `--config` file and its precedence, `--check-config`, one
//! error line with a hint and the documented exit code, listen address forms, `--version`
//! and `notify_build_info`, metrics present from the first scrape, log colour and debug
//! events. Every test runs the real binaries.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::SinkExt;
use notify_tests::{binary, http_client, next_json, seed_payload, wait_until, Gateway};
use tokio_tungstenite::tungstenite::Message;

/// `notify-gateway` with `args` and `env`, every inherited `NOTIFY_*` variable removed.
fn gateway_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary("notify-gateway"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") || key == "NO_COLOR" || key == "RUST_LOG" {
            command.env_remove(&key);
        }
    }
    command.args(args).envs(env.iter().copied());
    command
}

/// Runs `notify-gateway` to completion (for `--check-config` and start-up errors).
fn run_gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    gateway_command(args, env)
        .stdin(Stdio::null())
        .output()
        .expect("running notify-gateway")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("notify-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("writing a temporary file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The `key = value  # source` line of `--check-config` output for `key`.
fn effective_line<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} line in:\n{output}"))
}

#[test]
fn the_example_file_is_accepted() {
    let example = workspace_file("deploy/notify-gateway.toml");
    let output = run_gateway(
        &["--config", example.to_str().unwrap(), "--check-config"],
        &[],
    );
    let shown = stdout_of(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        effective_line(&shown, "listen"),
        "listen = \":8765\"  # file, binds 0.0.0.0:8765"
    );
    assert_eq!(
        effective_line(&shown, "log-format"),
        "log-format = \"json\"  # file"
    );
    // What --check-config prints is itself a file the gateway accepts.
    let printed = TempFile::new("printed.toml", &shown);
    let again = run_gateway(&["--config", printed.path(), "--check-config"], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr_of(&again));
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let file = TempFile::new(
        "precedence.toml",
        "queue-limit = 512\nhistory-cache = 7\nmax-concurrent-replays = 9\n",
    );
    let output = run_gateway(
        &[
            "--config",
            file.path(),
            "--check-config",
            "--queue-limit",
            "100",
        ],
        &[("NOTIFY_QUEUE_LIMIT", "300"), ("NOTIFY_HISTORY_CACHE", "8")],
    );
    let shown = stdout_of(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        effective_line(&shown, "queue-limit"),
        "queue-limit = 100  # flag"
    );
    assert_eq!(
        effective_line(&shown, "history-cache"),
        "history-cache = 8  # env"
    );
    assert_eq!(
        effective_line(&shown, "max-concurrent-replays"),
        "max-concurrent-replays = 9  # file"
    );
    assert_eq!(
        effective_line(&shown, "max-connections"),
        "max-connections = 1000000  # default"
    );
    // NOTIFY_CONFIG names the file too.
    let output = run_gateway(&["--check-config"], &[("NOTIFY_CONFIG", file.path())]);
    assert_eq!(
        effective_line(&stdout_of(&output), "queue-limit"),
        "queue-limit = 512  # file"
    );
}

#[tokio::test]
async fn a_running_gateway_serves_what_its_file_says() -> Result<()> {
    let file = TempFile::new("regions.toml", "regions = [\"FI\", \"cz\"]\n");
    let gateway = Gateway::start(&["--config", file.path()]).await?;
    assert_eq!(gateway.connections("FI").await?, 0.0);
    assert_eq!(gateway.connections("CZ").await?, 0.0);
    let (status, body) = gateway.get("/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        !body.contains("notify_connections{region=\"AE\"}"),
        "{body}"
    );
    let refused = gateway.connect("/?region=AE").await;
    assert!(refused.is_err(), "AE is not in the file's regions");
    Ok(())
}

#[test]
fn an_unknown_key_is_one_error_naming_its_line() {
    let file = TempFile::new(
        "unknown.toml",
        "# comment\nlisten = \"127.0.0.1:0\"\nqueu-limit = 5\n",
    );
    let output = run_gateway(&["--config", file.path()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_of(&output),
        format!(
            "error: {}:3: unknown key `queu-limit` (did you mean `queue-limit`?)\n",
            file.path()
        )
    );
    let bad_value = TempFile::new("bad-value.toml", "\n\nidle-timeout = \"0s\"\n");
    let output = run_gateway(&["--config", bad_value.path(), "--check-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr_of(&output);
    assert!(
        message.starts_with(&format!(
            "error: {}:3: invalid value for `idle-timeout`",
            bad_value.path()
        )),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn check_config_masks_secrets() {
    let output = run_gateway(
        &[
            "--check-config",
            "--redis-url",
            "redis://user:hunter2@127.0.0.1:6379/0",
            "--api-key",
            "topsecret1,topsecret2",
        ],
        &[],
    );
    let shown = stdout_of(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(
        !shown.contains("hunter2") && !shown.contains("topsecret"),
        "{shown}"
    );
    assert_eq!(
        effective_line(&shown, "redis-url"),
        "redis-url = \"redis://user:***@127.0.0.1:6379/0\"  # flag"
    );
    assert_eq!(
        effective_line(&shown, "api-key"),
        "api-key = [\"***\", \"***\"]  # flag"
    );
}

#[test]
fn check_config_shows_what_a_listen_address_binds() {
    let output = run_gateway(
        &[
            "--check-config",
            "--listen",
            "localhost:8765",
            "--admin-listen",
            ":9100",
        ],
        &[],
    );
    let shown = stdout_of(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        effective_line(&shown, "listen"),
        "listen = \"localhost:8765\"  # flag, binds 127.0.0.1:8765"
    );
    assert_eq!(
        effective_line(&shown, "admin-listen"),
        "admin-listen = \":9100\"  # flag, binds 0.0.0.0:9100"
    );
    let plain = stdout_of(&run_gateway(&["--check-config"], &[]));
    assert_eq!(
        effective_line(&plain, "listen"),
        "listen = \"127.0.0.1:8765\"  # default"
    );
}

#[test]
fn configuration_errors_print_one_line_with_a_hint_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--redis-url", "127.0.0.1:6379"],
            "error: --redis-url \"127.0.0.1:6379\" is not a Redis URL: did you mean redis://127.0.0.1:6379?\n",
        ),
        (
            &["--redis-url", ":hunter2@10.0.0.1:6379"],
            "error: --redis-url \":***@10.0.0.1:6379\" is not a Redis URL: did you mean redis://:***@10.0.0.1:6379?\n",
        ),
        (
            &["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
            "error: --tls-cert/--tls-key: cannot read the TLS certificate from /nonexistent/cert.pem: I/O error: No such file or directory (os error 2)\n",
        ),
    ];
    for (args, expected) in cases {
        // --listen port 1 is never bound: configuration is checked first.
        let mut all = vec!["--listen", "127.0.0.1:1"];
        all.extend_from_slice(args);
        let output = run_gateway(&all, &[("RUST_LOG", "debug")]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr_of(&output), *expected, "{args:?}");
        assert!(output.stdout.is_empty());
    }
    let output = run_gateway(&["--regions", "AE,UK"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output)
            .contains("region \"UK\" is not an assigned ISO 3166-1 alpha-2 code: did you mean GB?"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn a_taken_address_is_one_line_and_exit_69() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for flag in ["--listen", "--admin-listen"] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if flag == "--listen" {
            args = vec![];
        }
        args.extend_from_slice(&[flag, &address]);
        let output = run_gateway(&args, &[("RUST_LOG", "debug")]);
        assert_eq!(output.status.code(), Some(69), "{flag}");
        let message = stderr_of(&output);
        assert_eq!(message.lines().count(), 1, "{flag}: {message}");
        assert!(
            message.starts_with(&format!("error: cannot listen on {address} ({flag}): ")),
            "{message}"
        );
        assert!(message.contains("stop it or choose another"), "{message}");
    }
    drop(taken);
}

/// A gateway started by the test itself, for launches the harness does not make (its own
/// `--listen`, `RUST_LOG`, text logs).
struct Spawned {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl Spawned {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = gateway_command(args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting notify-gateway")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = log.lock().unwrap().iter().find_map(|line| {
                let start = line.find("listening on http://")? + "listening on http://".len();
                let end = start + line[start..].find('/')?;
                line[start..end].parse::<SocketAddr>().ok()
            });
            if let Some(addr) = listening {
                return Ok(Spawned { child, log, addr });
            }
            if let Some(status) = child.try_wait()? {
                bail!("gateway exited ({status}): {:?}", log.lock().unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gateway did not listen: {:?}", log.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn listen_takes_host_names_and_a_bare_port() -> Result<()> {
    for (listen, bound_ip) in [("localhost:0", "127.0.0.1"), (":0", "0.0.0.0")] {
        let gateway = Spawned::start(&["--listen", listen], &[]).await?;
        assert_eq!(gateway.addr.ip().to_string(), bound_ip, "{listen}");
        let response = http_client().get(gateway.http("/healthz")).send().await?;
        assert_eq!(response.status(), 200, "{listen}");
    }
    let output = run_gateway(&["--listen", "8765"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("is not HOST:PORT"));
    Ok(())
}

/// `notify-x 0.1.0 (commit abc1234)` → `abc1234`.
fn commit_of(version_line: &str, binary_name: &str) -> String {
    let rest = version_line
        .strip_prefix(&format!(
            "{binary_name} {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|| panic!("{version_line:?}"));
    let commit = rest
        .trim_end()
        .strip_suffix(')')
        .expect("closing parenthesis");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version_line:?}"
    );
    commit.to_owned()
}

#[tokio::test]
async fn version_and_build_info_name_the_commit() -> Result<()> {
    let output = run_gateway(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let commit = commit_of(&stdout_of(&output), "notify-gateway");
    let publish = Command::new(binary("notify-publish"))
        .arg("--version")
        .output()?;
    assert_eq!(
        commit_of(&String::from_utf8_lossy(&publish.stdout), "notify-publish"),
        commit
    );
    let gateway = Gateway::start(&[]).await?;
    let (_, metrics) = gateway.get("/metrics").await?;
    let expected = format!(
        "notify_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.lines().any(|line| line == expected), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn the_first_scrape_shows_every_counter_and_the_process_metrics() -> Result<()> {
    let gateway = Gateway::start(&[]).await?;
    let (status, metrics) = gateway.get("/metrics").await?;
    assert_eq!(status, 200);
    let value = |series: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    for reason in [
        "too_large",
        "not_utf8",
        "not_json",
        "duplicate_key",
        "not_object",
        "missing_field",
        "empty_field",
        "wrong_type",
        "unsupported_event",
        "bad_region",
        "region_mismatch",
        "bad_thumbnail",
        "unknown_channel",
        "foreign_id",
    ] {
        let series = format!("notify_bad_payloads_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&series), Some(0.0), "{series}");
    }
    for series in [
        "notify_slow_client_disconnects_total{transport=\"websocket\"}",
        "notify_slow_client_disconnects_total{transport=\"sse\"}",
        "notify_messages_delivered_total{transport=\"websocket\"}",
        "notify_messages_delivered_total{transport=\"sse\"}",
        "notify_messages_dropped_total",
        "notify_broker_reconnects_total",
        "notify_resumes_total{source=\"memory\"}",
        "notify_resumes_total{source=\"stream\"}",
        "notify_resumes_total{source=\"resync\"}",
        "notify_resyncs_total",
        "notify_accept_errors_total",
    ] {
        assert_eq!(value(series), Some(0.0), "{series}");
    }
    let pid_fds = std::fs::read_dir(format!("/proc/{}/fd", gateway.pid().unwrap()))?.count();
    for series in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let measured = value(series).unwrap_or_else(|| panic!("{series} missing"));
        assert!(measured > 0.0, "{series} = {measured}");
    }
    assert!(value("process_cpu_seconds_total").is_some());
    let open_fds = value("process_open_fds").unwrap();
    assert!(
        (open_fds - pid_fds as f64).abs() <= 8.0,
        "process_open_fds {open_fds} vs /proc {pid_fds}"
    );
    Ok(())
}

#[tokio::test]
async fn logs_to_a_pipe_have_no_colour() -> Result<()> {
    let gateway = Spawned::start(&["--listen", "127.0.0.1:0"], &[]).await?;
    let log = gateway.log();
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains("\x1b["), "{log}");
    Ok(())
}

/// Runs the gateway under a pseudo-terminal (`script`), so its stderr is a terminal, until
/// it has logged that it listens; returns what the terminal showed.
fn terminal_output(no_color: Option<&str>) -> String {
    let gateway = binary("notify-gateway");
    let mut command = Command::new("script");
    command
        .args(["-qec"])
        .arg(format!(
            "timeout -s INT 2 {} --listen 127.0.0.1:0",
            gateway.display()
        ))
        .arg("/dev/null")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let output = command.output().expect("running script(1)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    let coloured = terminal_output(None);
    assert!(coloured.contains("listening on"), "{coloured}");
    assert!(coloured.contains("\x1b["), "{coloured}");
    let plain = terminal_output(Some("1"));
    assert!(plain.contains("listening on"), "{plain}");
    assert!(!plain.contains("\x1b["), "{plain}");
}

/// Connects to region AE, publishes one notification over the API, resumes from before it,
/// and closes both sockets; returns the gateway's log.
async fn connection_story(rust_log: &str) -> Result<String> {
    let gateway = Spawned::start(
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        &[("RUST_LOG", rust_log)],
    )
    .await?;
    let ws = |query: &str| format!("ws://127.0.0.1:{}/{query}", gateway.addr.port());
    let (mut live, _) = tokio_tungstenite::connect_async(ws("?region=AE")).await?;
    let mut first_id = String::new();
    for video in ["debugvideo1", "debugvideo2"] {
        let published = http_client()
            .post(gateway.http("/api/publish"))
            .header("content-type", "application/json")
            .body(seed_payload("AE", video, "Debug story"))
            .send()
            .await?;
        assert_eq!(published.status(), 200, "{}", published.text().await?);
        let message = next_json(&mut live, Duration::from_secs(5))
            .await
            .context("the live client got nothing")?;
        assert_eq!(message["video_id"], video);
        if first_id.is_empty() {
            first_id = message["id"].as_str().context("no id")?.to_owned();
        }
    }
    // Resuming after the first replays the second, from the gateway's memory.
    let (mut resumed, _) =
        tokio_tungstenite::connect_async(ws(&format!("?region=AE&since={first_id}"))).await?;
    let replayed = next_json(&mut resumed, Duration::from_secs(5))
        .await
        .context("the resume got nothing")?;
    assert_eq!(replayed["video_id"], "debugvideo2", "{replayed}");
    live.send(Message::Close(None)).await?;
    drop(resumed);
    let logged = wait_until(Duration::from_secs(5), || async {
        let log = gateway.log();
        // The live client closes politely; the resumed one just drops its socket.
        log.contains("client sent a close frame")
            && (log.contains("connection ended by the client") || log.contains("connection failed"))
    })
    .await;
    let log = gateway.log();
    if rust_log == "info" {
        // Give the events time to have been logged if they were going to be.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return Ok(gateway.log());
    }
    assert!(logged, "{log}");
    Ok(log)
}

#[tokio::test]
async fn debug_level_tells_the_connection_story_and_info_does_not() -> Result<()> {
    let events = [
        "connection opened",
        "notification received",
        "resume served",
        "client sent a close frame",
    ];
    let debug = connection_story("debug").await?;
    for event in events {
        assert!(debug.contains(event), "{event} missing at debug:\n{debug}");
    }
    let opened = debug
        .lines()
        .find(|line| line.contains("connection opened"))
        .unwrap();
    assert!(
        opened.contains("\"region\":\"AE\"") && opened.contains("\"peer\""),
        "{opened}"
    );
    let resume = debug
        .lines()
        .find(|line| line.contains("resume served"))
        .unwrap();
    assert!(resume.contains("\"source\":\"memory\""), "{resume}");
    let info = connection_story("info").await?;
    assert!(info.contains("listening on"), "{info}");
    for event in events {
        assert!(!info.contains(event), "{event} logged at info:\n{info}");
    }
    Ok(())
}

#[test]
fn pairs_and_the_two_redis_url_sources_follow_the_precedence_across_sources() {
    // A certificate in the file without its key anywhere: one line, exit 2.
    let half = TempFile::new("half.toml", "tls-cert = \"/etc/notify/cert.pem\"\n");
    let output = run_gateway(&["--config", half.path(), "--check-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_of(&output),
        "error: --tls-cert is set but --tls-key is not: give both or neither\n"
    );
    // The file's redis-url yields to a variable's redis-url-file (a stronger source).
    let url_file = TempFile::new("redis-url", "redis://:hunter2@env-host:6380\n");
    let file = TempFile::new("redis.toml", "redis-url = \"redis://file-host:6379\"\n");
    let output = run_gateway(
        &["--config", file.path(), "--check-config"],
        &[("NOTIFY_REDIS_URL_FILE", url_file.path())],
    );
    let shown = stdout_of(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(shown.contains("# redis-url is not set"), "{shown}");
    assert!(
        effective_line(&shown, "redis-url-file").ends_with("# env"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    // Both in the file: one must go.
    let both = TempFile::new(
        "both.toml",
        &format!(
            "redis-url = \"redis://a:1\"\nredis-url-file = \"{}\"\n",
            url_file.path()
        ),
    );
    let output = run_gateway(&["--config", both.path(), "--check-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("`redis-url` and `redis-url-file` are both set"),
        "{}",
        stderr_of(&output)
    );
}
