//! Secrets from files: the Redis URL (password included) read from `--redis-url-file` by the
//! gateway and the CLI, and the password never in a log line or an error.

use std::time::Duration;

use notify_tests::{next_json, run_publish, Gateway, RedisServer};

const WAIT: Duration = Duration::from_secs(5);
/// A password with the characters URL redaction used to get wrong.
const PASSWORD: &str = "s3cr/t@pw";
const PASSWORD_IN_URL: &str = "s3cr%2Ft%40pw";

#[tokio::test]
async fn the_redis_url_can_come_from_a_file_and_its_password_stays_secret() {
    let redis = RedisServer::start().await.unwrap();
    let mut admin = redis.connection().await.unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("notify")
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let url = format!(
        "redis://notify:{PASSWORD_IN_URL}@127.0.0.1:{}",
        redis.port()
    );
    let file = std::env::temp_dir().join(format!("notify-redis-url-{}", std::process::id()));
    std::fs::write(&file, format!("# the primary\n{url}\n")).unwrap();
    let file = file.to_str().unwrap().to_owned();

    let gateway = Gateway::start(&["--redis-url-file", &file]).await.unwrap();
    assert!(
        gateway.wait_ready_status(200, WAIT).await,
        "the gateway authenticated with the URL from the file"
    );
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let output = run_publish(
        &[
            "--redis-url-file",
            &file,
            "--region",
            "AE",
            "--video-id",
            "fromfile",
            "--title",
            "Secret kept",
            "--thumbnail",
            "https://i.ytimg.com/vi/fromfile/hqdefault.jpg",
            "--channel",
            "c",
        ],
        None,
    )
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "fromfile"
    );

    // A wrong password in the file: the CLI fails with a redacted URL.
    let wrong = file.clone() + ".wrong";
    std::fs::write(&wrong, url.replace(PASSWORD_IN_URL, "n0t%2Fit")).unwrap();
    let output = run_publish(
        &[
            "--redis-url-file",
            &wrong,
            "--region",
            "AE",
            "--video-id",
            "v",
            "--title",
            "t",
            "--thumbnail",
            "https://x/y.jpg",
            "--channel",
            "c",
        ],
        None,
    )
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("n0t"), "{stderr}");

    for line in gateway.log_lines() {
        for secret in [PASSWORD, PASSWORD_IN_URL, "s3cr"] {
            assert!(!line.contains(secret), "password in a log line: {line}");
        }
    }
    // --redis-url and --redis-url-file together are a usage error.
    let output = run_publish(
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-url-file",
            &file,
        ],
        None,
    )
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(&wrong).ok();
}
