//! Who may publish over HTTP: API keys (empty ones refused, several for rotation, from a file)
//! and the open loopback mode's refusals, against the real gateway binary.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use notify_tests::{binary, http_client, next_json, seed_payload, Gateway};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

/// Runs the gateway binary with `args` and `env`, expecting it to refuse to start.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(binary("notify-gateway"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    let mut child = command
        .args(["--listen", "0.0.0.0:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running notify-gateway");
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting for notify-gateway") {
            break status.code();
        }
        if Instant::now() > deadline {
            // Still running: it started instead of refusing the configuration.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr)
}

#[test]
fn an_empty_key_is_a_configuration_error_not_an_open_api() {
    for (args, env) in [
        (vec!["--api-key", ""], vec![]),
        (vec!["--api-key", "  "], vec![]),
        (vec![], vec![("NOTIFY_API_KEY", "")]),
        (vec![], vec![("NOTIFY_API_KEY", " ")]),
    ] {
        let (code, stderr) = refused_start(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("must not be empty"), "{stderr}");
    }
    let (code, stderr) = refused_start(&["--api-key-file", "/nonexistent/keys"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/keys"), "{stderr}");
}

async fn post(gateway: &Gateway, auth: Option<&str>, region: &str, video: &str) -> (u16, Value) {
    let mut request = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(seed_payload(region, video, "Keys"));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("publish request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn keys_from_flags_and_a_file_all_work_and_nothing_else_does() {
    let key_file = std::env::temp_dir().join(format!("notify-test-keys-{}", std::process::id()));
    std::fs::write(&key_file, "# rotation\nfile-key\n").unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let gateway = Gateway::start_on_all_interfaces(&[
        "--api-key",
        "old-key,new-key",
        "--api-key-file",
        &key_file,
    ])
    .await
    .unwrap();
    let (_, info) = gateway.get("/api/info").await.unwrap();
    assert!(info.contains("\"publish\":\"key\""), "{info}");
    let mut client = gateway.connect_counted("/?region=FI", "FI").await.unwrap();

    let refused = [
        (None, "missing_key"),
        (Some("Basic abc"), "malformed_key"),
        (Some("Bearer "), "malformed_key"),
        (Some("Bearer"), "malformed_key"),
        (Some("Bearer old-key2"), "wrong_key"),
        (Some("Bearer old-ke"), "wrong_key"),
    ];
    for (auth, _) in refused {
        let (status, body) = post(&gateway, auth, "FI", "refused").await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("key"), "{body}");
        assert!(!body.to_string().contains("old-key"), "{body}");
    }
    for (reason, count) in [
        ("missing_key", 1.0),
        ("malformed_key", 3.0),
        ("wrong_key", 2.0),
    ] {
        let metric = format!("notify_api_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(gateway.metric(&metric).await.unwrap(), count, "{metric}");
    }
    for (n, key) in ["old-key", "new-key", "file-key"].iter().enumerate() {
        let (status, body) = post(&gateway, Some(&format!("Bearer {key}")), "FI", key).await;
        assert_eq!(status, 200, "{key}: {body}");
        let value = next_json(&mut client, WAIT).await.expect("delivered");
        assert_eq!(value["video_id"], *key, "message {n}");
    }
    // Nothing refused reached the client: the next message is the next accepted one.
    let (status, _) = post(&gateway, Some("Bearer new-key"), "FI", "last").await;
    assert_eq!(status, 200);
    assert_eq!(
        next_json(&mut client, WAIT).await.unwrap()["video_id"],
        "last"
    );
    std::fs::remove_file(&key_file).ok();
}

#[tokio::test]
async fn open_loopback_mode_refuses_relayed_cross_site_and_form_requests() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let (_, info) = gateway.get("/api/info").await.unwrap();
    assert!(info.contains("\"publish\":\"open\""), "{info}");
    let url = format!("{}/api/publish", gateway.http_url());
    let http = http_client();
    let body = seed_payload("AE", "v", "t");
    let cases: [(&str, &str, &str); 4] = [
        ("x-forwarded-for", "203.0.113.7", "forwarded"),
        ("forwarded", "for=203.0.113.7", "forwarded"),
        ("origin", "https://evil.example", "foreign_origin"),
        ("host", "rebound.evil.example:8765", "foreign_host"),
    ];
    for (name, value, reason) in cases {
        let response = http
            .post(&url)
            .header(name, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{name}: {value}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().is_some(), "{error}");
        let metric = format!("notify_api_rejections_total{{reason=\"{reason}\"}}");
        assert!(gateway.metric(&metric).await.unwrap() >= 1.0, "{metric}");
    }
    // A form-style body is refused in every mode (415), so a cross-site page cannot send one.
    let response = http
        .post(&url)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let metric = "notify_api_rejections_total{reason=\"not_json\"}";
    assert_eq!(gateway.metric(metric).await.unwrap(), 1.0);
    // A direct local request, with or without a JSON content type and a local Origin, works.
    for origin in [None, Some(gateway.http_url())] {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
}

/// Key guessing is bounded per address: after 10 wrong keys an address is answered 429 with
/// `Retry-After` — its right key too, so a guess cannot be confirmed — while another address
/// publishes as before.
#[tokio::test]
async fn an_address_that_guesses_keys_is_stopped_and_others_are_not() {
    let gateway = Gateway::start_on_all_interfaces(&["--api-key", "the-key"])
        .await
        .unwrap();
    let mut client = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    for guess in 0..10 {
        let (status, body) =
            post(&gateway, Some(&format!("Bearer guess-{guess}")), "FI", "x").await;
        assert_eq!(status, 401, "guess {guess}: {body}");
    }
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer the-key")
        .body(seed_payload("FI", "from-the-guesser", "Keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong API keys"),
        "{body}"
    );

    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let response = elsewhere
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer the-key")
        .body(seed_payload("FI", "from-elsewhere", "Keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "from-elsewhere",
        "the guesser's publish must not have gone out"
    );
    for (reason, count) in [("wrong_key", 10.0), ("too_many_wrong_keys", 1.0)] {
        let metric = format!("notify_api_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(gateway.metric(&metric).await.unwrap(), count, "{metric}");
    }
}
