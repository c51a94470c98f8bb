//! `notify-publish` end to end: the real binary against a real `redis-server` (and a real
//! gateway for `--gateway-url`), checked by a raw Redis subscriber that sees exactly the bytes
//! that were published.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use notify_tests::{free_port, next_json, run_publish, Gateway, RedisServer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

/// What the seed's PHP publisher sends for AE (JSON_UNESCAPED_UNICODE, rtl true).
const AE_ARABIC: &str = r#"{"event":"new_trending","region":"AE","video_id":"dQw4w9WgXcQ","title":"أخبار عاجلة من دبي","thumbnail":"https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg","channel":"قناة الأخبار","rtl":true,"ts":1764290000}"#;

/// The flags that describe [`AE_ARABIC`] (region in lower case, rtl and ts left to defaults
/// except `--ts`).
const AE_FLAGS: [&str; 12] = [
    "--region",
    "ae",
    "--video-id",
    "dQw4w9WgXcQ",
    "--title",
    "أخبار عاجلة من دبي",
    "--thumbnail",
    "https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg",
    "--channel",
    "قناة الأخبار",
    "--ts",
    "1764290000",
];

/// A raw Redis subscriber on `channels`, subscribed before this returns.
async fn subscriber(redis: &RedisServer, channels: &[&str]) -> Result<redis::aio::PubSub> {
    let mut pubsub = redis.client().get_async_pubsub().await?;
    for channel in channels {
        pubsub.subscribe(*channel).await?;
    }
    Ok(pubsub)
}

/// The next `(channel, payload)` within `timeout`.
async fn next_message(
    pubsub: &mut redis::aio::PubSub,
    timeout: Duration,
) -> Option<(String, String)> {
    let message = tokio::time::timeout(timeout, pubsub.on_message().next())
        .await
        .ok()??;
    let payload = String::from_utf8(message.get_payload_bytes().to_vec()).ok()?;
    Some((message.get_channel_name().to_owned(), payload))
}

/// Runs the binary off the async runtime.
async fn publish(args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_publish(&args, stdin.as_deref())
    })
    .await
    .context("joining notify-publish")?
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn redis_args<'a>(redis_url: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--redis-url", redis_url];
    args.extend_from_slice(rest);
    args
}

/// A Redis stream id `ms-seq` as numbers, so ids compare in stream order.
fn stream_id(id: &str) -> (u64, u64) {
    let parsed = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("not a stream id: {id:?}"))
}

/// Asserts that `ids` (of one stream) strictly increase.
fn assert_increasing(ids: &[String]) {
    for pair in ids.windows(2) {
        assert!(
            stream_id(&pair[0]) < stream_id(&pair[1]),
            "ids out of order: {ids:?}"
        );
    }
}

/// Checks that `payload` is exactly `expected` (canonical JSON without an id) with the stream
/// id spliced in as its first field, `{"id":"<id>",…`, as the publish script sends it; returns
/// the id.
fn with_id(payload: &str, expected: &str) -> Result<String> {
    let (stripped, id) = strip_id(payload);
    let id = id.with_context(|| format!("no id in {payload}"))?;
    stream_id(&id);
    assert_eq!(stripped, expected);
    let body = expected
        .strip_prefix('{')
        .context("expected a JSON object")?;
    assert_eq!(
        payload,
        format!("{{\"id\":{},{body}", Value::String(id.clone()))
    );
    Ok(id)
}

/// Human output: each line is the matching `expected` line followed by ` (id <stream id>)`.
/// Returns the printed ids.
fn printed_ids(stdout: &str, expected: &[&str]) -> Result<Vec<String>> {
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    lines
        .iter()
        .zip(expected)
        .map(|(line, expected)| {
            let id = line
                .strip_prefix(expected)
                .and_then(|rest| rest.strip_prefix(" (id "))
                .and_then(|rest| rest.strip_suffix(')'))
                .with_context(|| format!("{line:?} is not {expected:?} with an id"))?;
            stream_id(id);
            Ok(id.to_owned())
        })
        .collect()
}

/// Removes and returns the `id` of one JSON output line.
fn take_id(reply: &mut Value) -> Result<String> {
    let id = reply
        .as_object_mut()
        .and_then(|object| object.remove("id"))
        .with_context(|| format!("no id in {reply}"))?;
    let id = id.as_str().with_context(|| format!("id {id}"))?.to_owned();
    stream_id(&id);
    Ok(id)
}

/// The entries of a stream, oldest first: `(id, fields)`.
async fn stream_entries(
    redis: &RedisServer,
    key: &str,
) -> Result<Vec<(String, HashMap<String, String>)>> {
    let mut connection = redis.connection().await?;
    Ok(redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_notification_from_flags() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;

    let output = publish(&redis_args(&url, &AE_FLAGS), None).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let printed = printed_ids(
        &text(&output.stdout),
        &["published AE dQw4w9WgXcQ to tvs:AE: reached 1 gateway node"],
    )?;
    assert_eq!(text(&output.stderr), "");
    let (channel, payload) = next_message(&mut sub, WAIT).await.context("no message")?;
    assert_eq!(channel, "tvs:AE");
    let first_id = with_id(&payload, AE_ARABIC)?;
    assert_eq!(printed[..], [first_id.as_str()]);

    // --no-rtl overrides the region's default; without --ts the time is now.
    let mut flags = redis_args(&url, &AE_FLAGS[..10]);
    flags.push("--no-rtl");
    let before = unix_now();
    let output = publish(&flags, None).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let printed = printed_ids(
        &text(&output.stdout),
        &["published AE dQw4w9WgXcQ to tvs:AE: reached 1 gateway node"],
    )?;
    let (_, payload) = next_message(&mut sub, WAIT).await.context("no message")?;
    let value: Value = serde_json::from_str(&payload)?;
    assert_eq!(value["rtl"], false);
    let ts = value["ts"].as_i64().context("ts")?;
    assert!((before..=unix_now()).contains(&ts), "ts {ts}");
    let expected = AE_ARABIC
        .replace("\"rtl\":true", "\"rtl\":false")
        .replace("1764290000", &ts.to_string());
    let second_id = with_id(&payload, &expected)?;
    assert_eq!(printed[..], [second_id.as_str()]);
    assert_increasing(&[first_id, second_id]);

    // --rtl on a left-to-right region; --output json for one message has no line number.
    let mut sub_fi = subscriber(&redis, &["tvs:FI"]).await?;
    let output = publish(
        &redis_args(
            &url,
            &[
                "--region",
                "FI",
                "--video-id",
                "fi1",
                "--title",
                "Hyvää päivää — ä ö",
                "--thumbnail",
                "https://example.fi/t.jpg",
                "--channel",
                "Yle",
                "--ts",
                "1",
                "--rtl",
                "--output",
                "json",
            ],
        ),
        None,
    )
    .await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).lines().count(), 1);
    let mut reply: Value = serde_json::from_slice(&output.stdout)?;
    let printed = take_id(&mut reply)?;
    assert_eq!(
        reply,
        serde_json::json!({"region":"FI","video_id":"fi1","redis_channel":"tvs:FI","gateway_nodes_reached":1,"subscribers":1})
    );
    let (_, payload) = next_message(&mut sub_fi, WAIT)
        .await
        .context("no message")?;
    let id = with_id(
        &payload,
        r#"{"event":"new_trending","region":"FI","video_id":"fi1","title":"Hyvää päivää — ä ö","thumbnail":"https://example.fi/t.jpg","channel":"Yle","rtl":true,"ts":1}"#,
    )?;
    assert_eq!(printed, id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flag_names_the_field() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut flags = AE_FLAGS;
    flags[7] = "javascript:alert(1)";
    let output = publish(&redis_args(&url, &flags), None).await?;
    assert_eq!(output.status.code(), Some(65));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid --thumbnail"), "{stderr}");
    assert!(stderr.contains("not an http(s) URL"), "{stderr}");

    let mut flags = AE_FLAGS;
    flags[1] = "XX";
    let output = publish(&redis_args(&url, &flags), None).await?;
    assert_eq!(output.status.code(), Some(65));
    assert!(text(&output.stderr).contains("invalid --region"));
    Ok(())
}

/// NDJSON with every seed script, rtl and ts defaulted or given, an extra field, CRLF and a
/// blank line; and the exact payloads each channel received, in order.
fn mixed_batch() -> (String, Vec<(&'static str, &'static str)>) {
    let lines = [
        // rtl from the region (AE => true), ts given.
        r#"{"event":"new_trending","region":"AE","video_id":"dQw4w9WgXcQ","title":"أخبار عاجلة من دبي","thumbnail":"https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg","channel":"قناة الأخبار","ts":1764290000}"#,
        // rtl overridden on AE.
        r#"{"event":"new_trending","region":"ae","video_id":"ae2","title":"Dubai skyline","thumbnail":"https://i.ytimg.com/vi/ae2/hq.jpg","channel":"Visit","rtl":false,"ts":1764290001}"#,
        "",
        r#"{"event":"new_trending","region":"CZ","video_id":"cz1","title":"Příliš žluťoučký kůň úpěl ďábelské ódy — č ž š","thumbnail":"https://i.ytimg.com/vi/cz1/hq.jpg","channel":"Česká televize","ts":1764290002}"#,
        r#"{"event":"new_trending","region":"FI","video_id":"fi1","title":"Hyvää päivää — ä ö","thumbnail":"https://i.ytimg.com/vi/fi1/hq.jpg","channel":"Yle","ts":1764290003}"#,
        // An extra field is passed through after ts.
        r#"{"event":"new_trending","region":"DK","video_id":"dk1","title":"Rødgrød med fløde — ø å","thumbnail":"https://i.ytimg.com/vi/dk1/hq.jpg","channel":"DR","ts":1764290004,"source":"cron"}"#,
    ];
    let input = format!("{}\r\n{}\n", lines[..2].join("\n"), lines[2..].join("\n"));
    let expected = vec![
        ("tvs:AE", AE_ARABIC),
        (
            "tvs:AE",
            r#"{"event":"new_trending","region":"AE","video_id":"ae2","title":"Dubai skyline","thumbnail":"https://i.ytimg.com/vi/ae2/hq.jpg","channel":"Visit","rtl":false,"ts":1764290001}"#,
        ),
        (
            "tvs:CZ",
            r#"{"event":"new_trending","region":"CZ","video_id":"cz1","title":"Příliš žluťoučký kůň úpěl ďábelské ódy — č ž š","thumbnail":"https://i.ytimg.com/vi/cz1/hq.jpg","channel":"Česká televize","rtl":false,"ts":1764290002}"#,
        ),
        (
            "tvs:FI",
            r#"{"event":"new_trending","region":"FI","video_id":"fi1","title":"Hyvää päivää — ä ö","thumbnail":"https://i.ytimg.com/vi/fi1/hq.jpg","channel":"Yle","rtl":false,"ts":1764290003}"#,
        ),
        (
            "tvs:DK",
            r#"{"event":"new_trending","region":"DK","video_id":"dk1","title":"Rødgrød med fløde — ø å","thumbnail":"https://i.ytimg.com/vi/dk1/hq.jpg","channel":"DR","rtl":false,"ts":1764290004,"source":"cron"}"#,
        ),
    ];
    (input, expected)
}

/// Receives `expected` in order, each with its stream id spliced in first, and checks that the
/// ids of each channel strictly increase in that order. Returns the ids.
async fn expect_messages(
    sub: &mut redis::aio::PubSub,
    expected: &[(&str, &str)],
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (channel, payload) in expected {
        let (got_channel, got_payload) = next_message(sub, WAIT)
            .await
            .with_context(|| format!("no message for {channel}"))?;
        assert_eq!(got_channel, *channel);
        ids.push(with_id(&got_payload, payload)?);
    }
    let mut by_channel: HashMap<&str, Vec<String>> = HashMap::new();
    for ((channel, _), id) in expected.iter().zip(&ids) {
        by_channel.entry(channel).or_default().push(id.clone());
    }
    for ids in by_channel.values() {
        assert_increasing(ids);
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_from_a_file() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut sub = subscriber(&redis, &["tvs:AE", "tvs:CZ", "tvs:FI", "tvs:DK"]).await?;
    let (input, expected) = mixed_batch();
    let path = std::env::temp_dir().join(format!("notify-publish-{}.ndjson", free_port()));
    std::fs::write(&path, &input)?;

    let output = publish(
        &redis_args(&url, &["--input", path.to_str().context("utf-8 path")?]),
        None,
    )
    .await;
    let _ = std::fs::remove_file(&path);
    let output = output?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let printed = printed_ids(
        &text(&output.stdout),
        &[
            "published AE dQw4w9WgXcQ to tvs:AE: reached 1 gateway node",
            "published AE ae2 to tvs:AE: reached 1 gateway node",
            "published CZ cz1 to tvs:CZ: reached 1 gateway node",
            "published FI fi1 to tvs:FI: reached 1 gateway node",
            "published DK dk1 to tvs:DK: reached 1 gateway node",
        ],
    )?;
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("published 5 of 5 lines in ") && stderr.ends_with(" ms\n"),
        "{stderr}"
    );
    let ids = expect_messages(&mut sub, &expected).await?;
    assert_eq!(printed, ids);

    // A file that does not exist is EX_NOINPUT.
    let output = publish(
        &redis_args(&url, &["--input", "/nonexistent/x.ndjson"]),
        None,
    )
    .await?;
    assert_eq!(output.status.code(), Some(66));
    assert!(text(&output.stderr).contains("cannot read /nonexistent/x.ndjson"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_from_stdin_with_json_output() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut sub = subscriber(&redis, &["tvs:AE", "tvs:CZ", "tvs:FI", "tvs:DK"]).await?;
    let (input, expected) = mixed_batch();
    // A line without ts gets the current time.
    let input = format!(
        "{input}{}\n",
        r#"{"event":"new_trending","region":"CZ","video_id":"cz2","title":"č ž š","thumbnail":"https://i.ytimg.com/vi/cz2/hq.jpg","channel":"ČT"}"#
    );
    let before = unix_now();
    let output = publish(
        &redis_args(&url, &["--input", "-", "--output", "json"]),
        Some(&input),
    )
    .await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stderr), "");
    let mut replies: Vec<Value> = text(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(replies.len(), 7, "{replies:?}");
    let printed: Vec<String> = replies[..6]
        .iter_mut()
        .map(take_id)
        .collect::<Result<_>>()?;
    assert_eq!(
        replies[0],
        serde_json::json!({"line":1,"region":"AE","video_id":"dQw4w9WgXcQ","redis_channel":"tvs:AE","gateway_nodes_reached":1,"subscribers":1})
    );
    let lines: Vec<i64> = replies[..6]
        .iter()
        .map(|reply| reply["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 4, 5, 6, 7]);
    assert_eq!(replies[5]["redis_channel"], "tvs:CZ");
    assert_eq!(
        replies[6]["summary"],
        serde_json::json!({"published":6,"bad":0,"failed":0,"lines":6,"elapsed_ms":replies[6]["summary"]["elapsed_ms"]})
    );

    let mut ids = expect_messages(&mut sub, &expected).await?;
    let (channel, payload) = next_message(&mut sub, WAIT).await.context("cz2")?;
    assert_eq!(channel, "tvs:CZ");
    let ts = serde_json::from_str::<Value>(&payload)?["ts"]
        .as_i64()
        .context("ts")?;
    assert!((before..=unix_now()).contains(&ts), "ts {ts}");
    let cz2 = with_id(
        &payload,
        &format!(
            r#"{{"event":"new_trending","region":"CZ","video_id":"cz2","title":"č ž š","thumbnail":"https://i.ytimg.com/vi/cz2/hq.jpg","channel":"ČT","rtl":false,"ts":{ts}}}"#
        ),
    )?;
    // cz1 (the third message) and cz2 share the CZ stream.
    assert_increasing(&[ids[2].clone(), cz2.clone()]);
    ids.push(cz2);
    assert_eq!(printed, ids);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_named_and_good_lines_still_published() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;
    let good = |id: &str| {
        format!(
            r#"{{"event":"new_trending","region":"AE","video_id":"{id}","title":"عاجل","thumbnail":"https://i.ytimg.com/vi/{id}/hq.jpg","channel":"c","ts":5}}"#
        )
    };
    let input = [
        good("good1"),
        r#"{"event":"new_trending","region":"AE","video_id":"v","thumbnail":"https://x/a.jpg","channel":"c"}"#.to_owned(),
        String::new(),
        "this is not json".to_owned(),
        r#"{"event":"new_trending","region":"ZZ","video_id":"v","title":"t","thumbnail":"https://x/a.jpg","channel":"c"}"#.to_owned(),
        r#"{"event":"new_trending","region":"AE","video_id":"v","title":"t","thumbnail":"javascript:alert(1)","channel":"c"}"#.to_owned(),
        good("good2"),
    ]
    .join("\n");

    let output = publish(&redis_args(&url, &["--input", "-"]), Some(&input)).await?;
    assert_eq!(output.status.code(), Some(65));
    let stderr = text(&output.stderr);
    let stderr_lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(stderr_lines.len(), 5, "{stderr}");
    assert_eq!(stderr_lines[0], "line 2: field `title` is missing");
    assert!(
        stderr_lines[1].starts_with("line 4: payload is not JSON"),
        "{stderr}"
    );
    assert!(
        stderr_lines[2].starts_with("line 5: field `region`"),
        "{stderr}"
    );
    assert!(stderr_lines[3].starts_with("line 6: thumbnail"), "{stderr}");
    assert!(
        stderr_lines[4].starts_with("published 2 of 6 lines (4 bad) in "),
        "{stderr}"
    );
    let printed = printed_ids(
        &text(&output.stdout),
        &[
            "published AE good1 to tvs:AE: reached 1 gateway node",
            "published AE good2 to tvs:AE: reached 1 gateway node",
        ],
    )?;
    let mut ids = Vec::new();
    for video_id in ["good1", "good2"] {
        let (_, payload) = next_message(&mut sub, WAIT).await.context(video_id)?;
        let expected = good(video_id).replace("\"ts\":5", "\"rtl\":true,\"ts\":5");
        ids.push(with_id(&payload, &expected)?);
    }
    assert_eq!(printed, ids);
    assert_increasing(&ids);

    // The same in JSON: each bad line as {"line":N,"error":…}, then the summary.
    let output = publish(
        &redis_args(&url, &["--input", "-", "--output", "json"]),
        Some(&input),
    )
    .await?;
    assert_eq!(output.status.code(), Some(65));
    let replies: Vec<Value> = text(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        replies[0],
        serde_json::json!({"line":2,"error":"field `title` is missing"})
    );
    let summary = &replies.last().context("summary")?["summary"];
    assert_eq!(
        (summary["published"].as_i64(), summary["bad"].as_i64()),
        (Some(2), Some(4))
    );
    let mut published: Vec<Value> = replies
        .iter()
        .filter(|reply| reply.get("video_id").is_some())
        .cloned()
        .collect();
    let printed: Vec<String> = published.iter_mut().map(take_id).collect::<Result<_>>()?;
    assert_eq!(
        published,
        [
            serde_json::json!({"line":1,"region":"AE","video_id":"good1","redis_channel":"tvs:AE","gateway_nodes_reached":1,"subscribers":1}),
            serde_json::json!({"line":7,"region":"AE","video_id":"good2","redis_channel":"tvs:AE","gateway_nodes_reached":1,"subscribers":1}),
        ]
    );
    let mut json_ids = Vec::new();
    for video_id in ["good1", "good2"] {
        let (_, payload) = next_message(&mut sub, WAIT).await.context(video_id)?;
        let expected = good(video_id).replace("\"ts\":5", "\"rtl\":true,\"ts\":5");
        json_ids.push(with_id(&payload, &expected)?);
    }
    assert_eq!(printed, json_ids);
    ids.extend(json_ids);
    assert_increasing(&ids);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_ex_unavailable() -> Result<()> {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let output = publish(&redis_args(&url, &AE_FLAGS), None).await?;
    assert_eq!(output.status.code(), Some(69));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("Redis at {url} is unavailable")),
        "{stderr}"
    );

    // A batch: bad lines are still named, the summary counts the rest as failed.
    let input = format!("{AE_ARABIC}\n{{}}\n{AE_ARABIC}\n");
    let output = publish(&redis_args(&url, &["--input", "-"]), Some(&input)).await?;
    assert_eq!(output.status.code(), Some(69));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("line 2: field `event` is missing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("published 0 of 3 lines (1 bad, 2 failed)"),
        "{stderr}"
    );
    assert!(stderr.contains("is unavailable"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out() -> Result<()> {
    // Accepts connections (the kernel's backlog) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("redis://{}", listener.local_addr()?);
    let started = Instant::now();
    let output = publish(
        &redis_args(&url, &[&["--timeout", "300ms"][..], &AE_FLAGS[..]].concat()),
        None,
    )
    .await?;
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(69), "{}", text(&output.stderr));
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(text(&output.stderr).contains("no answer within 300ms"));
    drop(listener);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() -> Result<()> {
    for args in [
        &[][..],
        &["--region", "AE"][..],
        &["--input", "-", "--region", "AE"][..],
        &["--input", "-", "--output", "yaml"][..],
        &["--input", "-", "--timeout", "soon"][..],
        &["--input", "-", "--gateway-url", "ftp://host"][..],
    ] {
        let output = publish(args, Some("")).await?;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
    let help = publish(&["--help"], None).await?;
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    for code in ["65 ", "69 ", "77 "] {
        assert!(help.contains(code), "--help lacks exit code {code}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lines_are_pipelined() -> Result<()> {
    const LINES: usize = 10_000;
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;
    let input: String = (0..LINES)
        .map(|i| {
            format!(
                r#"{{"event":"new_trending","region":"AE","video_id":"v{i}","title":"عاجل {i}","thumbnail":"https://i.ytimg.com/vi/{i}/hq.jpg","channel":"c","ts":{i}}}"#
            ) + "\n"
        })
        .collect();
    let started = Instant::now();
    let output = publish(
        &redis_args(&url, &["--input", "-", "--quiet"]),
        Some(&input),
    )
    .await?;
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("published 10000 of 10000 lines in "),
        "{stderr}"
    );
    eprintln!("{LINES} lines: {stderr}(process wall time {elapsed:?})");
    // Generous for an unoptimised build on a shared machine; one round trip per line would
    // still be far slower than this with a subscriber attached.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let mut previous = (0, 0);
    for i in 0..LINES {
        let (_, payload) = next_message(&mut sub, WAIT)
            .await
            .with_context(|| format!("message {i}"))?;
        let value: Value = serde_json::from_str(&payload)?;
        assert_eq!(value["video_id"], format!("v{i}"), "order");
        let id = stream_id(value["id"].as_str().context("id")?);
        assert!(previous < id, "message {i}: id {id:?} after {previous:?}");
        previous = id;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_recorded_in_the_region_stream() -> Result<()> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let line = |video_id: &str| {
        format!(
            r#"{{"event":"new_trending","region":"AE","video_id":"{video_id}","title":"عاجل {video_id}","thumbnail":"https://i.ytimg.com/vi/{video_id}/hq.jpg","channel":"قناة","rtl":true,"ts":7}}"#
        )
    };
    let video_ids = ["s1", "s2", "s3"];
    let input: String = video_ids.iter().map(|id| line(id) + "\n").collect();
    let output = publish(&redis_args(&url, &["--input", "-"]), Some(&input)).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // Nobody is subscribed: the message is recorded all the same.
    let printed = printed_ids(
        &text(&output.stdout),
        &[
            "published AE s1 to tvs:AE: reached 0 gateway nodes",
            "published AE s2 to tvs:AE: reached 0 gateway nodes",
            "published AE s3 to tvs:AE: reached 0 gateway nodes",
        ],
    )?;
    assert_increasing(&printed);

    let entries = stream_entries(&redis, "tvs:AE:stream").await?;
    let stream_ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(stream_ids, printed);
    for ((_, fields), video_id) in entries.iter().zip(video_ids) {
        // Only the canonical JSON, without the id (the id is the entry's own).
        let expected = HashMap::from([("payload".to_owned(), line(video_id))]);
        assert_eq!(*fields, expected);
    }
    // Nothing is recorded for a region that was not published to.
    assert!(stream_entries(&redis, "tvs:FI:stream").await?.is_empty());

    // --retention caps the stream. MAXLEN ~ trims whole nodes (100 entries each by
    // default), so the length stays near the cap rather than exactly at it.
    const LINES: usize = 300;
    let input: String = (0..LINES)
        .map(|i| line(&format!("r{i}")).replace("\"AE\"", "\"FI\"") + "\n")
        .collect();
    let output = publish(
        &redis_args(&url, &["--input", "-", "--quiet", "--retention", "5"]),
        Some(&input),
    )
    .await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let mut connection = redis.connection().await?;
    let length: usize = redis::cmd("XLEN")
        .arg("tvs:FI:stream")
        .query_async(&mut connection)
        .await?;
    assert!((5..=200).contains(&length), "XLEN {length}");
    let entries = stream_entries(&redis, "tvs:FI:stream").await?;
    assert_eq!(entries.len(), length);
    // What is kept is the newest, in order.
    let kept: Vec<String> = entries
        .iter()
        .map(|(_, fields)| {
            let payload: Value = serde_json::from_str(&fields["payload"]).expect("payload");
            payload["video_id"].as_str().expect("video_id").to_owned()
        })
        .collect();
    let newest: Vec<String> = (LINES - length..LINES).map(|i| format!("r{i}")).collect();
    assert_eq!(kept, newest);
    // The AE stream was not touched.
    assert_eq!(stream_entries(&redis, "tvs:AE:stream").await?.len(), 3);
    Ok(())
}

// --- Through the gateway (`--gateway-url`) ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_publish_with_key() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&["--redis-url", &redis.url(), "--api-key", "k"]).await?;
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;
    let mut browser = gateway.connect_counted("/?region=AE", "AE").await?;
    let gateway_url = gateway.http_url();

    let mut args = vec!["--gateway-url", gateway_url.as_str(), "--api-key", "k"];
    args.extend_from_slice(&AE_FLAGS);
    let output = publish(&args, None).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // Redis counts the gateway node and the raw subscriber. A gateway that records history
    // also reports the message's stream id.
    let stdout = text(&output.stdout);
    let rest = stdout
        .strip_prefix(&format!(
            "published AE dQw4w9WgXcQ via {gateway_url}: reached 2 gateway nodes"
        ))
        .with_context(|| stdout.clone())?;
    let id = match rest.strip_prefix(" (id ") {
        Some(id) => Some(id.strip_suffix(")\n").context("id suffix")?.to_owned()),
        None => {
            assert_eq!(rest, "\n");
            None
        }
    };
    let (channel, payload) = next_message(&mut sub, WAIT).await.context("redis")?;
    assert_eq!(channel, "tvs:AE");
    let (payload, payload_id) = strip_id(&payload);
    assert_eq!(payload, AE_ARABIC);
    assert_eq!(payload_id, id);
    let mut frame = next_json(&mut browser, WAIT).await.context("browser")?;
    let frame_id = frame
        .as_object_mut()
        .and_then(|object| object.remove("id"))
        .and_then(|id| id.as_str().map(str::to_owned));
    assert_eq!(frame_id, id);
    assert_eq!(frame, serde_json::from_str::<Value>(AE_ARABIC)?);

    // A batch, JSON output, with one locally bad line.
    let (input, expected) = mixed_batch();
    let input = format!("{input}{{\"event\":\"new_trending\"}}\n");
    let output = publish(
        &[
            "--gateway-url",
            &gateway_url,
            "--api-key",
            "k",
            "--input",
            "-",
            "--output",
            "json",
        ],
        Some(&input),
    )
    .await?;
    assert_eq!(output.status.code(), Some(65), "{}", text(&output.stderr));
    let replies: Vec<Value> = text(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(replies[0]["line"], 7);
    assert_eq!(replies[0]["error"], "field `region` is missing");
    assert_eq!(replies[1]["gateway"], gateway_url.as_str());
    assert_eq!(replies[1]["region"], "AE");
    assert_eq!(replies[1]["gateway_nodes_reached"], 2);
    assert_eq!(replies[1]["subscribers"], 2, "kept, deprecated");
    let summary = &replies.last().context("summary")?["summary"];
    assert_eq!(
        (summary["published"].as_i64(), summary["bad"].as_i64()),
        (Some(5), Some(1))
    );
    // One request in flight per region: the AE lines arrive once each, in input order, with
    // the id the output reported for each.
    let want: Vec<&str> = expected
        .iter()
        .filter(|(channel, _)| *channel == "tvs:AE")
        .map(|(_, payload)| *payload)
        .collect();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let (channel, payload) = next_message(&mut sub, WAIT)
            .await
            .context("batch message")?;
        assert_eq!(channel, "tvs:AE");
        let (payload, id) = strip_id(&payload);
        let video_id = serde_json::from_str::<Value>(&payload)?["video_id"].clone();
        let reply = replies
            .iter()
            .find(|reply| reply["video_id"] == video_id)
            .with_context(|| format!("no output for {video_id}"))?;
        assert_eq!(reply["id"].as_str(), id.as_deref(), "{reply}");
        got.push(payload);
    }
    assert_eq!(got, want);
    Ok(())
}

/// A payload without the stream id a history-recording publisher splices in, and that id.
fn strip_id(payload: &str) -> (String, Option<String>) {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(payload) else {
        return (payload.to_owned(), None);
    };
    let Some(Value::String(id)) = object.get("id") else {
        return (payload.to_owned(), None);
    };
    let field = format!("\"id\":{}", Value::String(id.clone()));
    let stripped =
        payload
            .replacen(&format!("{field},"), "", 1)
            .replacen(&format!(",{field}"), "", 1);
    (stripped, Some(id.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_missing_or_wrong_key() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&["--redis-url", &redis.url(), "--api-key", "k"]).await?;
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;
    let gateway_url = gateway.http_url();

    for key in [None, Some("wrong")] {
        let mut args = vec!["--gateway-url", gateway_url.as_str()];
        if let Some(key) = key {
            args.extend(["--api-key", key]);
        }
        args.extend_from_slice(&AE_FLAGS);
        let output = publish(&args, None).await?;
        assert_eq!(output.status.code(), Some(77), "{}", text(&output.stderr));
        let stderr = text(&output.stderr);
        assert!(stderr.contains("refused the request: 401"), "{stderr}");
        assert!(stderr.contains("API key"), "{stderr}");

        // A batch stops at the first refusal.
        let input = format!("{AE_ARABIC}\n{AE_ARABIC}\n");
        let mut args = vec!["--gateway-url", gateway_url.as_str(), "--input", "-"];
        if let Some(key) = key {
            args.extend(["--api-key", key]);
        }
        let output = publish(&args, Some(&input)).await?;
        assert_eq!(output.status.code(), Some(77), "{}", text(&output.stderr));
        assert!(text(&output.stderr).contains("published 0 of 2 lines (2 failed)"));
    }
    assert!(next_message(&mut sub, Duration::from_millis(300))
        .await
        .is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_gateway_is_ex_unavailable() -> Result<()> {
    let gateway_url = format!("http://127.0.0.1:{}", free_port());
    let mut args = vec!["--gateway-url", gateway_url.as_str()];
    args.extend_from_slice(&AE_FLAGS);
    let started = Instant::now();
    let output = publish(&args, None).await?;
    assert_eq!(output.status.code(), Some(69), "{}", text(&output.stderr));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(text(&output.stderr).contains(&format!("gateway at {gateway_url} is unavailable")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_its_broker_down_is_ex_unavailable() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let gateway = Gateway::start(&["--redis-url", &redis.url()]).await?;
    redis.kill();
    assert!(
        gateway.wait_ready_status(503, WAIT).await,
        "gateway stayed ready"
    );
    let gateway_url = gateway.http_url();
    let mut args = vec!["--gateway-url", gateway_url.as_str()];
    args.extend_from_slice(&AE_FLAGS);
    let output = publish(&args, None).await?;
    assert_eq!(output.status.code(), Some(69), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is unavailable: 503"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_is_not_an_error() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let redis = RedisServer::start().await?;
    let mut sub = subscriber(&redis, &["tvs:AE"]).await?;
    let input: String = (0..200).map(|_| format!("{AE_ARABIC}\n")).collect();
    let mut child = notify_tests::publish_command()
        .args(["--redis-url", &redis.url(), "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Like `notify-publish … | head -0`: the reader is gone before anything is written.
    drop(child.stdout.take());
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("published 200 of 200 lines in "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for i in 0..200 {
        next_message(&mut sub, WAIT)
            .await
            .with_context(|| format!("message {i}"))?;
    }
    Ok(())
}

/// Peak resident memory (`VmHWM`) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Lines of stdin fed by [`stdin_streams_with_bounded_memory`], each about 2 KB: 24 MB in all.
const STREAMED_LINES: usize = 12_000;

/// Peak RSS allowed to the CLI while it streams [`STREAMED_LINES`] lines: windows of at most
/// 1,000 messages or 1 MiB keep it near its idle size (about 14 MB), where reading the input
/// whole would take more than twice the input (24 MB raw, then parsed).
const STREAMING_RSS_BOUND_KIB: u64 = 24 * 1024;

#[tokio::test]
async fn stdin_streams_with_bounded_memory() {
    use std::io::Write as _;
    use std::process::Stdio;

    let redis = RedisServer::start().await.unwrap();
    let mut pubsub = subscriber(&redis, &["tvs:AE"]).await.unwrap();
    let mut child = notify_tests::publish_command()
        .args(["--redis-url", &redis.url(), "--input", "-", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let padding = "ع".repeat(1000);
    let line = move |number: usize| {
        AE_ARABIC
            .replace("dQw4w9WgXcQ", &format!("v{number}"))
            .replace("أخبار عاجلة من دبي", &padding)
            + "\n"
    };

    // The first lines are published while stdin is still open.
    let mut head = String::new();
    for number in 1..=10 {
        head.push_str(&line(number));
    }
    stdin.write_all(head.as_bytes()).unwrap();
    let (_, first) = next_message(&mut pubsub, WAIT)
        .await
        .expect("published before the input ended");
    assert!(first.contains("\"video_id\":\"v1\""), "{first}");

    // The rest from a writer thread, as fast as the pipe takes it; stdin stays open after.
    let writer = std::thread::spawn(move || {
        let mut chunk = String::new();
        for number in 11..=STREAMED_LINES {
            chunk.push_str(&line(number));
            if chunk.len() > 64 * 1024 {
                stdin.write_all(chunk.as_bytes()).unwrap();
                chunk.clear();
            }
        }
        stdin.write_all(chunk.as_bytes()).unwrap();
        stdin
    });
    let started = Instant::now();
    let mut received = 1;
    while received < STREAMED_LINES {
        let message = next_message(&mut pubsub, Duration::from_secs(20)).await;
        assert!(
            message.is_some(),
            "only {received} of {STREAMED_LINES} published"
        );
        received += 1;
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(pid);
    let stdin = writer.join().unwrap();
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "published {STREAMED_LINES} of {STREAMED_LINES} lines"
        )),
        "{stderr}"
    );
    eprintln!("streamed {STREAMED_LINES} lines in {elapsed:?}, peak RSS {peak} KiB");
    assert!(
        peak < STREAMING_RSS_BOUND_KIB,
        "peak RSS {peak} KiB over the {STREAMING_RSS_BOUND_KIB} KiB bound"
    );
}

#[tokio::test]
async fn an_overlong_stdin_line_is_a_bad_line_by_number() {
    let redis = RedisServer::start().await.unwrap();
    let mut pubsub = subscriber(&redis, &["tvs:AE"]).await.unwrap();
    // 1 MB with no newline in it, between two good lines.
    let long = format!("{{\"title\":\"{}\"}}", "x".repeat(1_000_000));
    let input = format!("{AE_ARABIC}\n{long}\n{AE_ARABIC}\n");
    let output = publish(&redis_args(&redis.url(), &["--input", "-"]), Some(&input))
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("line 2: line is longer than the 65536-byte payload limit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("published 2 of 3 lines (1 bad)"),
        "{stderr}"
    );
    for _ in 0..2 {
        assert!(next_message(&mut pubsub, WAIT).await.is_some());
    }
}

#[tokio::test]
async fn api_key_from_a_file_and_never_empty() -> Result<()> {
    let gateway = Gateway::start(&["--api-key", "k-file"]).await?;
    let dir = notify_tests::certs::CertDir::new()?;
    let key_file = dir.write("key", "k-file\n")?;
    let key_file = key_file.to_string_lossy().into_owned();
    let url = gateway.http_url();

    let mut args = vec![
        "--gateway-url",
        url.as_str(),
        "--api-key-file",
        key_file.as_str(),
    ];
    args.extend_from_slice(&AE_FLAGS);
    let output = publish(&args, None).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    // An empty key, however it is given, is a usage error: nothing is sent without a key.
    let blank_file = dir.write("blank", " \n")?;
    let blank_file = blank_file.to_string_lossy().into_owned();
    for key_args in [
        vec!["--api-key", ""],
        vec!["--api-key", "  "],
        vec!["--api-key-file", blank_file.as_str()],
    ] {
        let mut args = vec!["--gateway-url", url.as_str()];
        args.extend_from_slice(&key_args);
        args.extend_from_slice(&AE_FLAGS);
        let output = publish(&args, None).await?;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key_args:?}: {}",
            text(&output.stderr)
        );
    }
    let output = std::process::Command::new(notify_tests::binary("notify-publish"))
        .env("NOTIFY_API_KEY", "")
        .args(["--gateway-url", url.as_str()])
        .args(AE_FLAGS)
        .output()?;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    Ok(())
}

#[test]
fn secrets_stay_out_of_help_and_url_errors() {
    let password = "pw/with-slash";
    let url = format!("redis://:{password}@127.0.0.1:6379/0");
    for binary in ["notify-publish", "notify-gateway"] {
        let output = std::process::Command::new(notify_tests::binary(binary))
            .env("NOTIFY_REDIS_URL", &url)
            .env("NOTIFY_API_KEY", "secret-key")
            .arg("--help")
            .output()
            .unwrap();
        let help = text(&output.stdout);
        assert!(help.contains("--redis-url"), "{binary}: {help}");
        assert!(
            !help.contains("pw/with"),
            "{binary} --help shows the password"
        );
        assert!(
            !help.contains("secret-key"),
            "{binary} --help shows the key"
        );
    }
    for (flag, url) in [
        ("--redis-url", format!("redis://:{password}@host:notaport")),
        ("--redis-url", format!("http://:{password}@host")),
        ("--gateway-url", format!("ftp://user:{password}@host")),
        (
            "--gateway-url",
            format!("https://user:{password}@host:notaport"),
        ),
    ] {
        let output = run_publish(&[flag, &url, "--input", "-"], Some("")).unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
        assert!(
            !stderr.contains("pw/with"),
            "{flag} error shows the password: {stderr}"
        );
    }
}

/// A long-running publish survives Redis losing its script cache (a restart, `SCRIPT FLUSH`,
/// a replica promoted in a failover): the messages refused with `NOSCRIPT` are sent again
/// after the script is loaded again, once each, in order.
#[tokio::test]
async fn a_lost_script_cache_is_reloaded_and_nothing_fails() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let redis = RedisServer::start().await?;
    let line = |n: usize| {
        format!(
            r#"{{"event":"new_trending","region":"AE","video_id":"v{n}","title":"t","thumbnail":"https://i.ytimg.com/vi/v{n}/hq.jpg","channel":"c","rtl":true,"ts":7}}"#
        ) + "\n"
    };
    let mut child = notify_tests::publish_command()
        .args(["--redis-url", &redis.url(), "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    // Its stdout is buffered until it ends: the stream's length tells what went out.
    let mut connection = redis.connection().await?;
    stdin.write_all((0..5).map(line).collect::<String>().as_bytes())?;
    stdin.flush()?;
    let deadline = Instant::now() + WAIT;
    loop {
        let length: usize = redis::cmd("XLEN")
            .arg("tvs:AE:stream")
            .query_async(&mut connection)
            .await?;
        if length == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the first 5 were not published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await?;
    stdin.write_all((5..10).map(line).collect::<String>().as_bytes())?;
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("published 10 of 10 lines in "),
        "{stderr}"
    );
    let entries = stream_entries(&redis, "tvs:AE:stream").await?;
    let videos: Vec<String> = entries
        .iter()
        .map(|(_, fields)| {
            serde_json::from_str::<Value>(&fields["payload"]).unwrap()["video_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..10).map(|n| format!("v{n}")).collect();
    assert_eq!(videos, expected, "each once, in order");
    Ok(())
}
