//! The runnable examples work against the real gateway.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use notify_tests::{binary, http_client, seed_payload, Gateway};

#[tokio::test]
async fn terminal_client_prints_its_regions_notifications() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let mut child = Command::new(binary("terminal-client"))
        .args([
            "--url",
            &format!("ws://{}", gateway.addr()),
            "--region",
            "fi",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        notify_tests::wait_until(Duration::from_secs(10), || async {
            gateway.connections("FI").await.unwrap_or(0.0) >= 1.0
        })
        .await,
        "the example connects"
    );
    let http = http_client();
    for (region, video, title) in [
        ("US", "us1", "Not for FI"),
        ("FI", "fi1", "Hyvää päivää ä ö"),
    ] {
        let response = http
            .post(format!("{}/api/publish", gateway.http_url()))
            .body(seed_payload(region, video, title))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(Result::ok)
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        line.as_deref(),
        Some("[FI] Hyvää päivää ä ö — Channel (fi1)")
    );
}
