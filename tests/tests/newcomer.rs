//! The README's first screen works as a newcomer types it: start the gateway, publish one
//! notification with the README's own command, see it arrive where the README's page URL
//! watches.
//!
//! The commands are read out of README.md (the part above its first `---`), so this test
//! breaks when the README drifts. `cargo run --release -p <package> -- <args>` runs the
//! already built binary of that package with the same arguments; the README's address
//! (`127.0.0.1:8765`, the gateway's default) becomes the test gateway's free port.

use std::path::Path;
use std::time::{Duration, Instant};

use notify_tests::{binary, next_json, run_publish, Gateway};

const WAIT: Duration = Duration::from_secs(10);

/// The README's first screen: everything above its first horizontal rule.
fn first_screen() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let end = readme
        .find("\n---\n")
        .expect("the README's first screen ends at `---`");
    readme[..end].to_owned()
}

/// The contents of the first screen's ```sh blocks.
fn shell_blocks(text: &str) -> Vec<String> {
    text.split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

/// The shell words of the block that runs `cargo run --release -p <package>`, and the
/// arguments after `--`.
fn cargo_run_args(blocks: &[String], package: &str) -> Vec<String> {
    let prefix = ["cargo", "run", "--release", "-p", package];
    let words = blocks
        .iter()
        // A shell removes `\<newline>` (line continuation) before it splits words.
        .filter_map(|block| shlex::split(&block.replace("\\\n", "")))
        .find(|words| words.len() >= prefix.len() && words[..prefix.len()] == prefix)
        .unwrap_or_else(|| panic!("the README's first screen runs `{}`", prefix.join(" ")));
    match words.get(prefix.len()).map(String::as_str) {
        None => Vec::new(),
        Some("--") => words[prefix.len() + 1..].to_vec(),
        Some(other) => panic!("unexpected word {other:?} after `{}`", prefix.join(" ")),
    }
}

/// The page address the first screen tells the reader to open (`<http://…>`).
fn page_url(text: &str) -> reqwest::Url {
    let start = text
        .find("<http://")
        .expect("a page link on the first screen")
        + 1;
    let end = start + text[start..].find('>').expect("the link's closing `>`");
    reqwest::Url::parse(&text[start..end]).expect("the page link parses")
}

#[tokio::test]
async fn the_readme_first_screen_publishes_to_its_own_gateway_and_the_page_receives_it() {
    let screen = first_screen();
    let blocks = shell_blocks(&screen);
    let page = page_url(&screen);
    let origin = page.origin().ascii_serialization();

    // The page link names the gateway's own default address, and the region the page watches.
    let help = std::process::Command::new(binary("notify-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let listen = format!(
        "{}:{}",
        page.host_str().unwrap(),
        page.port_or_known_default().unwrap()
    );
    assert!(
        help.contains(&format!("[default: {listen}]")),
        "the README's page {page} is not the gateway's default --listen:\n{help}"
    );
    let region = page
        .query_pairs()
        .find(|(key, _)| key == "region")
        .map(|(_, value)| value.into_owned())
        .expect("the page link names a region");

    // Step 1: the gateway, with the README's arguments (the harness adds a free --listen).
    let started = Instant::now();
    let gateway_args = cargo_run_args(&blocks, "notify-gateway");
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let gateway = Gateway::start(&gateway_args).await.unwrap();
    let gateway_up = started.elapsed();

    // Step 2: the page, as a browser's WebSocket sees it (same query, same Origin).
    let started = Instant::now();
    let mut browser = gateway
        .connect_counted(&format!("/?{}", page.query().unwrap()), &region)
        .await
        .unwrap();
    let page_open = started.elapsed();

    // Step 3: the README's publish command, aimed at the page's gateway.
    let mut publish_args = cargo_run_args(&blocks, "notify-publish");
    let url_flag = publish_args
        .iter()
        .position(|word| word == "--gateway-url")
        .expect("the README's publish command names the gateway it publishes to");
    assert_eq!(
        publish_args[url_flag + 1],
        origin,
        "the README publishes to the gateway whose page it opens"
    );
    publish_args[url_flag + 1] = gateway.http_url();
    let title = publish_args
        .iter()
        .position(|word| word == "--title")
        .map(|at| publish_args[at + 1].clone())
        .expect("a --title");
    let started = Instant::now();
    let args: Vec<&str> = publish_args.iter().map(String::as_str).collect();
    let output = run_publish(&args, None).unwrap();
    let published = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(": reached 1 client (id "),
        "the command says it reached the one browser: {stdout}"
    );

    // Step 4: the page receives it.
    let notification = next_json(&mut browser, WAIT)
        .await
        .expect("the page's WebSocket receives the notification (and is still open)");
    let delivered = started.elapsed();
    assert_eq!(notification["event"], "new_trending");
    assert_eq!(notification["region"], region.as_str());
    assert_eq!(notification["title"], title.as_str());
    assert_eq!(notification["rtl"], true, "AE is right to left");
    assert!(notification["id"].is_string(), "{notification}");
    eprintln!(
        "first screen: gateway up {gateway_up:?}, page open {page_open:?}, \
         publish command {published:?}, on the page {delivered:?} after the command started"
    );
}

/// The README's publish command without a target (what a newcomer types from the old README):
/// the missing local Redis is named, and the error says how to reach a gateway instead.
#[tokio::test]
async fn publishing_to_a_missing_local_redis_suggests_the_gateway() {
    let mut args = cargo_run_args(&shell_blocks(&first_screen()), "notify-publish");
    let url_flag = args
        .iter()
        .position(|word| word == "--gateway-url")
        .unwrap();
    args.drain(url_flag..url_flag + 2);
    // A loopback port nothing listens on stands in for a machine without Redis on 6379.
    let missing = format!("redis://127.0.0.1:{}", notify_tests::free_port());
    args.extend(["--redis-url".to_owned(), missing.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_publish(&args, None).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("Redis at {missing} is unavailable")),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "to publish through a gateway instead, name it: --gateway-url http://127.0.0.1:8765"
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one error, printed once: {stderr}"
    );
}
