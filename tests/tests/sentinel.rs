//! Redis Sentinel: the gateway and `notify-publish` find the primary through three sentinels
//! (`redis+sentinel://`) and follow it through a failover, and no acknowledged message is lost
//! silently: each is delivered exactly once, or the client is told `resync`.
//!
//! The group is real: a primary, a replica and three `redis-sentinel`s on free ports
//! ([`notify_tests::sentinel`]). The failover test runs a healthy phase first (the positive
//! control: several ping and block periods, no reconnect, no resync, everything delivered
//! once), then kills the primary with SIGKILL while publishing continues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use notify_tests::sentinel::SentinelGroup;
use notify_tests::{run_publish, Gateway, RedisServer, WsClient};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// One sentinel group at a time: on a busy machine a sentinel whose timer runs 2 s late
/// enters TILT mode and does nothing for 30 s; two groups at once make that likelier.
static ONE_GROUP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the healthy phase runs: several `--redis-ping-interval` (1 s) and `XREAD BLOCK`
/// (1 s) periods.
const HEALTHY: Duration = Duration::from_secs(4);

/// Longest wait for a failover to complete.
const FAILOVER_LIMIT: Duration = Duration::from_secs(45);

/// Successful publishes required after the failover before the run stops.
const PUBLISHED_AFTER_FAILOVER: usize = 15;

/// What the client received, in order.
#[derive(Debug, Clone)]
enum Frame {
    Notification {
        video_id: String,
        id: Option<String>,
        at: Instant,
    },
    Resync,
}

/// Everything the client's reader saw; `ended` is set if the socket closed or failed.
#[derive(Debug, Default)]
struct Received {
    frames: Vec<Frame>,
    ended: Option<String>,
}

/// Exit status of `notify-publish` for a message written but not acknowledged by a replica.
const NOT_REPLICATED: i32 = 75;

/// One `notify-publish` run.
#[derive(Debug, Clone)]
struct Publish {
    video_id: String,
    started: Instant,
    /// Its exit status: 0 published and replicated, 75 published but not replicated,
    /// anything else not (or not known to be) published.
    code: Option<i32>,
    stderr: String,
}

fn reader(mut socket: WsClient, received: Arc<Mutex<Received>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ended = loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value: serde_json::Value = match serde_json::from_str(&text) {
                        Ok(value) => value,
                        Err(error) => break format!("not JSON ({error}): {text}"),
                    };
                    let frame = match value["event"].as_str() {
                        Some("resync") => Frame::Resync,
                        _ => Frame::Notification {
                            video_id: value["video_id"].as_str().unwrap_or_default().to_owned(),
                            id: value["id"].as_str().map(str::to_owned),
                            at: Instant::now(),
                        },
                    };
                    received.lock().unwrap().frames.push(frame);
                }
                Some(Ok(Message::Close(close))) => break format!("closed: {close:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => break format!("failed: {error}"),
                None => break "ended".to_owned(),
            }
        };
        received.lock().unwrap().ended = Some(ended);
    })
}

/// Publishes `AE` notifications `s0`, `s1`, … one `notify-publish` run at a time (each asks the
/// sentinels for the primary and waits for one replica) until `stop`.
fn publisher(
    url: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Publish>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let video_id = format!("s{n}");
            n += 1;
            let started = Instant::now();
            let args = [
                "--redis-url",
                &url,
                "--wait-replicas",
                "1",
                "--timeout",
                "1s",
                "--region",
                "AE",
                "--video-id",
                &video_id,
                "--title",
                "failover",
                "--thumbnail",
                "https://i.ytimg.com/vi/x/hqdefault.jpg",
                "--channel",
                "c",
            ]
            .map(str::to_owned);
            let output = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_publish(&args, None)
            })
            .await
            .expect("joining notify-publish")
            .expect("running notify-publish");
            log.lock().unwrap().push(Publish {
                video_id,
                started,
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    })
}

/// The delivery verdict for one client: every `required` message arrives exactly once, with
/// its id, unless a `resync` came; no message arrives twice between two `resync`s; ids rise between two
/// `resync`s. Returns the problems found.
fn judge(frames: &[Frame], required: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut resyncs = 0;
    // Per video id, how often it arrived in each resync epoch.
    let mut seen: HashMap<&str, HashMap<usize, usize>> = HashMap::new();
    let mut last_id: Option<(u64, u64)> = None;
    for frame in frames {
        match frame {
            Frame::Resync => {
                resyncs += 1;
                last_id = None;
            }
            Frame::Notification { video_id, id, .. } => {
                *seen
                    .entry(video_id)
                    .or_default()
                    .entry(resyncs)
                    .or_default() += 1;
                if let Some(id) = id.as_deref().and_then(parse_id) {
                    if last_id.is_some_and(|last| last >= id) {
                        problems.push(format!("{video_id}: id {id:?} not above {last_id:?}"));
                    }
                    last_id = Some(id);
                }
            }
        }
    }
    for (video_id, epochs) in &seen {
        if epochs.values().any(|count| *count > 1) {
            problems.push(format!(
                "{video_id} delivered twice without a resync between"
            ));
        }
    }
    let without_id: Vec<&str> = frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Notification {
                video_id, id: None, ..
            } => Some(video_id.as_str()),
            _ => None,
        })
        .collect();
    for video_id in required {
        if without_id.contains(video_id) {
            problems.push(format!("{video_id} arrived without its id"));
        }
        if !seen.contains_key(video_id) && resyncs == 0 {
            problems.push(format!(
                "{video_id} was acknowledged but never delivered, and no resync came"
            ));
        }
    }
    problems
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn delivered(received: &Arc<Mutex<Received>>, video_id: &str) -> Option<Instant> {
    received
        .lock()
        .unwrap()
        .frames
        .iter()
        .find_map(|frame| match frame {
            Frame::Notification {
                video_id: v, at, ..
            } if v == video_id => Some(*at),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_and_publisher_follow_a_sentinel_failover() -> Result<()> {
    let _alone = ONE_GROUP_AT_A_TIME.lock().await;
    let mut group = SentinelGroup::start().await?;
    let url = group.url();
    let gateway = Gateway::start(&[
        "--redis-url",
        &url,
        "--regions",
        "AE,US",
        "--redis-ping-interval",
        "1s",
    ])
    .await?;
    assert!(gateway.wait_ready_status(200, WAIT).await, "never ready");
    let socket = gateway.connect_counted("/?region=AE", "AE").await?;
    let received = Arc::new(Mutex::new(Received::default()));
    let reading = reader(socket, Arc::clone(&received));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let publishing = publisher(url.clone(), Arc::clone(&stop), Arc::clone(&log));

    // Positive control: a healthy group across several periods of every timer.
    tokio::time::sleep(HEALTHY).await;
    let healthy: Vec<Publish> = log.lock().unwrap().clone();
    let acknowledged = healthy.iter().filter(|p| p.code == Some(0)).count();
    assert!(
        acknowledged == healthy.len() && acknowledged >= 10,
        "healthy publishes failed: {:?}",
        healthy.iter().find(|p| p.code != Some(0))
    );
    let last_healthy = &healthy.last().context("no publish")?.video_id;
    let caught_up = notify_tests::wait_until(WAIT, || async {
        delivered(&received, last_healthy).is_some()
    })
    .await;
    assert!(caught_up, "the healthy phase's last message never arrived");
    {
        let received = received.lock().unwrap();
        assert_eq!(received.ended, None, "the client's socket ended");
        assert!(!received.frames.iter().any(|f| matches!(f, Frame::Resync)));
        let required: Vec<&str> = healthy.iter().map(|p| p.video_id.as_str()).collect();
        assert_eq!(judge(&received.frames, &required), Vec::<String>::new());
    }
    assert_eq!(gateway.metric("notify_broker_reconnects_total").await?, 0.0);
    assert_eq!(gateway.metric("notify_broker_resyncs_total").await?, 0.0);
    assert_eq!(gateway.get("/readyz").await?.0, 200);

    // Negative control: the primary dies without a word.
    let old_primary = group.primary.port();
    let killed = Instant::now();
    group.primary.kill();
    let mut not_ready_seen = false;
    let mut ready_again = None;
    // A failover takes a few seconds; the limit also covers one TILT period (30 s), which a
    // sentinel enters when the machine stalls it for 2 s.
    while killed.elapsed() < FAILOVER_LIMIT {
        let status = gateway.get("/readyz").await.map(|(status, _)| status).ok();
        if status == Some(503) {
            not_ready_seen = true;
        } else if status == Some(200) && not_ready_seen {
            ready_again = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        not_ready_seen,
        "/readyz never said 503 after the primary died"
    );
    let ready_again = ready_again
        .with_context(|| format!("/readyz never came back to 200:\n{}", group.log_tail(15)))?;

    // Publishing resumes against the new primary. It has no replica left, so each write
    // is reported as not replicated (75): written, but a second failover could lose it.
    let written = |p: &Publish| matches!(p.code, Some(0 | NOT_REPLICATED));
    let resumed = notify_tests::wait_until(Duration::from_secs(20), || async {
        log.lock()
            .unwrap()
            .iter()
            .filter(|p| p.started > killed && written(p))
            .count()
            >= PUBLISHED_AFTER_FAILOVER
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publishing.await?;
    let published: Vec<Publish> = log.lock().unwrap().clone();
    assert!(
        resumed,
        "publishing did not resume after the failover; last: {:?}",
        published.last()
    );
    let new_primary = group.primary_port().await.context("no primary named")?;
    assert_eq!(
        new_primary,
        group.replica.port(),
        "the replica was not promoted"
    );
    assert_ne!(new_primary, old_primary);

    // Required: every message a replica acknowledged, and every one written to the new
    // primary (the first write after the kill started after the promotion).
    let promoted = published
        .iter()
        .find(|p| p.started > killed && written(p))
        .context("no write after the kill")?
        .started;
    let required: Vec<&str> = published
        .iter()
        .filter(|p| p.code == Some(0) || (p.started >= promoted && written(p)))
        .map(|p| p.video_id.as_str())
        .collect();
    let last = required.last().context("nothing required")?.to_string();
    let arrived =
        notify_tests::wait_until(WAIT, || async { delivered(&received, &last).is_some() }).await;
    assert!(arrived, "the last acknowledged message never arrived");
    let first_after = published
        .iter()
        .filter(|p| p.started >= promoted && written(p))
        .find_map(|p| delivered(&received, &p.video_id))
        .context("nothing published after the kill arrived")?;
    let (frames, ended) = {
        let received = received.lock().unwrap();
        (received.frames.clone(), received.ended.clone())
    };
    assert_eq!(ended, None, "the client's socket ended");
    let problems = judge(&frames, &required);
    assert!(problems.is_empty(), "{problems:#?}");
    reading.abort();

    let failed: Vec<&Publish> = published.iter().filter(|p| !written(p)).collect();
    eprintln!(
        "sentinel failover: kill -> /readyz 200 in {:?}; kill -> first write to the new \
         primary started after {:?}; kill -> its delivery {:?}; {} publishes, {} failed during \
         the failover (exit codes {:?}); gateway reconnects {}, resyncs {}",
        ready_again,
        promoted.duration_since(killed),
        first_after.duration_since(killed),
        published.len(),
        failed.len(),
        failed.iter().map(|p| p.code).collect::<Vec<_>>(),
        gateway.metric("notify_broker_reconnects_total").await?,
        gateway.metric("notify_broker_resyncs_total").await?,
    );
    for publish in failed.iter().take(3) {
        eprintln!("  {}: {}", publish.video_id, publish.stderr.trim());
    }
    Ok(())
}

/// `--wait-replicas`: a write no replica acknowledged is reported (exit 75, naming its id),
/// yet it is in the stream — the publisher knows which messages a failover could lose.
#[tokio::test]
async fn wait_replicas_reports_a_write_no_replica_holds() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--wait-replicas",
        "1",
        "--timeout",
        "400ms",
        "--region",
        "AE",
        "--video-id",
        "alone",
        "--title",
        "t",
        "--thumbnail",
        "https://i.ytimg.com/vi/x/hqdefault.jpg",
        "--channel",
        "c",
    ];
    let output = run_publish(&args, None)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("acknowledged by 0 of 1 replicas"),
        "{stderr}"
    );
    let mut connection = redis.connection().await?;
    let length: usize = redis::cmd("XLEN")
        .arg("tvs:AE:stream")
        .query_async(&mut connection)
        .await?;
    assert_eq!(length, 1, "the write itself happened");

    // Positive control: without the flag the same write is a success.
    let without: Vec<&str> = args
        .iter()
        .copied()
        .filter(|arg| *arg != "--wait-replicas" && *arg != "1")
        .collect();
    let output = run_publish(&without, None)?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A malformed sentinel URL is a usage error that names the fault and hides the password; a
/// sentinel URL whose sentinels do not answer is "unavailable" (69), not a crash or a hang.
#[tokio::test]
async fn sentinel_urls_fail_clearly() -> Result<()> {
    let message = [
        "--region",
        "AE",
        "--video-id",
        "v",
        "--title",
        "t",
        "--thumbnail",
        "https://i.ytimg.com/vi/x/hqdefault.jpg",
        "--channel",
        "c",
    ];
    let run = |url: &str| {
        let mut args = vec!["--redis-url", url, "--timeout", "500ms"];
        args.extend(message);
        run_publish(&args, None)
    };
    let output = run("redis+sentinel://:pw-secret@127.0.0.1:1")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no master name"), "{stderr}");
    assert!(!stderr.contains("pw-secret"), "{stderr}");

    let closed = notify_tests::free_port();
    let started = Instant::now();
    let output = run(&format!(
        "redis+sentinel://:pw-secret@127.0.0.1:{closed}/notify"
    ))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(!stderr.contains("pw-secret"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // The gateway refuses the malformed URL at start, naming it.
    let error = Gateway::start(&["--redis-url", "redis+sentinel://h1:x/notify"])
        .await
        .expect_err("a malformed sentinel URL must stop the gateway");
    assert!(
        format!("{error:#}").contains("bad sentinel address"),
        "{error:#}"
    );
    Ok(())
}

/// A graceful failover (`SENTINEL FAILOVER`) keeps the old primary running: first still
/// claiming to be the primary, then (once Sentinel converts it, killing its clients) as a
/// replica. The gateway and the publisher must end up on the new primary, with nothing left
/// on the demoted one, and delivery exactly once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_stays_on_a_demoted_primary() -> Result<()> {
    let _alone = ONE_GROUP_AT_A_TIME.lock().await;
    let group = SentinelGroup::start().await?;
    let url = group.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--regions", "AE"]).await?;
    assert!(gateway.wait_ready_status(200, WAIT).await, "never ready");
    let socket = gateway.connect_counted("/?region=AE", "AE").await?;
    let received = Arc::new(Mutex::new(Received::default()));
    let reading = reader(socket, Arc::clone(&received));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let publishing = publisher(url.clone(), Arc::clone(&stop), Arc::clone(&log));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let switched = Instant::now();
    let promoted = group.replica.port();
    group.failover().await?;
    let moved = notify_tests::wait_until(FAILOVER_LIMIT, || async {
        group.primary_port().await == Some(promoted)
    })
    .await;
    assert!(
        moved,
        "the sentinels never named the replica:\n{}",
        group.log_tail(15)
    );
    let demoted = notify_tests::wait_until(Duration::from_secs(20), || async {
        role(&group.primary).await.as_deref() == Some("slave")
    })
    .await;
    assert!(
        demoted,
        "Sentinel never converted the old primary:\n{}",
        group.log_tail(15)
    );
    let converted = switched.elapsed();
    // Publishing goes on against the new primary, acknowledged by the demoted one.
    let resumed = notify_tests::wait_until(Duration::from_secs(15), || async {
        log.lock()
            .unwrap()
            .iter()
            .filter(|p| p.started > switched && p.code == Some(0))
            .count()
            >= 5
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publishing.await?;
    assert!(
        resumed,
        "publishing did not resume: {:?}",
        log.lock().unwrap().last()
    );
    assert!(
        gateway.wait_ready_status(200, WAIT).await,
        "not ready again"
    );

    let names = |clients: String| -> Vec<String> {
        clients
            .lines()
            .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("name=")))
            .filter(|name| name.starts_with("notify-gateway"))
            .map(str::to_owned)
            .collect()
    };
    let on_new = names(client_list(&group.replica).await?);
    let on_old = names(client_list(&group.primary).await?);
    assert!(
        on_new.iter().any(|name| name == "notify-gateway:streams"),
        "the stream follower is not on the new primary: {on_new:?}"
    );
    assert_eq!(
        on_old,
        Vec::<String>::new(),
        "connections left on the demoted primary"
    );

    let published: Vec<Publish> = log.lock().unwrap().clone();
    let required: Vec<&str> = published
        .iter()
        .filter(|p| p.code == Some(0))
        .map(|p| p.video_id.as_str())
        .collect();
    let last = required.last().context("nothing acknowledged")?.to_string();
    let arrived =
        notify_tests::wait_until(WAIT, || async { delivered(&received, &last).is_some() }).await;
    assert!(arrived, "the last acknowledged message never arrived");
    let first_after = published
        .iter()
        .filter(|p| p.started > switched && p.code == Some(0))
        .find_map(|p| delivered(&received, &p.video_id));
    let (frames, ended) = {
        let received = received.lock().unwrap();
        (received.frames.clone(), received.ended.clone())
    };
    reading.abort();
    assert_eq!(ended, None, "the client's socket ended");
    let problems = judge(&frames, &required);
    assert!(problems.is_empty(), "{problems:#?}");
    eprintln!(
        "graceful failover: old primary converted to a replica {converted:?} after SENTINEL \
         FAILOVER; first replicated message after it delivered at {:?}; resyncs {}",
        first_after.map(|at| at.duration_since(switched)),
        gateway.metric("notify_broker_resyncs_total").await?,
    );
    Ok(())
}

/// The `role:` line of `INFO replication` (`master` or `slave`).
async fn role(redis: &RedisServer) -> Option<String> {
    let mut connection = redis.connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("role:"))
        .map(|role| role.trim().to_owned())
}

async fn client_list(redis: &RedisServer) -> Result<String> {
    let mut connection = redis.connection().await?;
    Ok(redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await?)
}
