//! Example: print one region's trending notifications in a terminal.
//!
//! Connects to a notify gateway, prints each `new_trending` notification as one line, and on any
//! disconnect reconnects with backoff, resuming after the last id it printed (`?since=`), so a
//! gateway restart loses nothing.
//!
//! ```sh
//! cargo run -p terminal-client -- --url ws://127.0.0.1:8765 --region FI
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use notify_proto::{Region, StreamId};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Print one region's trending notifications.
#[derive(Debug, Parser)]
struct Args {
    /// Gateway WebSocket base URL.
    #[arg(long, env = "NOTIFY_WS_URL", default_value = "ws://127.0.0.1:8765")]
    url: String,
    /// Region to follow.
    #[arg(long, default_value = "US", value_parser = |text: &str| Region::parse(text).map_err(|e| e.to_string()))]
    region: Region,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut last_id: Option<StreamId> = None;
    let mut delay = Duration::from_millis(250);
    loop {
        let url = match last_id {
            Some(id) => format!("{}/?region={}&since={id}", args.url, args.region),
            None => format!("{}/?region={}", args.url, args.region),
        };
        match tokio_tungstenite::connect_async(&url).await {
            Ok((mut socket, _)) => {
                eprintln!("connected to {url}");
                delay = Duration::from_millis(250);
                while let Some(frame) = socket.next().await {
                    match frame.context("reading from the gateway") {
                        Ok(Message::Text(text)) => print_message(&text, &mut last_id),
                        Ok(Message::Close(close)) => {
                            eprintln!("closed by the gateway: {close:?}");
                            break;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            eprintln!("{error:#}");
                            break;
                        }
                    }
                }
            }
            Err(error) => eprintln!("cannot connect to {url}: {error}"),
        }
        eprintln!("reconnecting in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn print_message(text: &str, last_id: &mut Option<StreamId>) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        eprintln!("not JSON: {text}");
        return;
    };
    let field = |name: &str| value[name].as_str().unwrap_or("").to_owned();
    match value["event"].as_str() {
        Some("new_trending") => {
            if let Ok(id) = StreamId::parse(&field("id")) {
                *last_id = Some(id);
            }
            println!(
                "[{}] {} — {} ({})",
                field("region"),
                field("title"),
                field("channel"),
                field("video_id")
            );
        }
        Some("resync") => {
            eprintln!("some notifications were missed: {}", field("reason"));
            *last_id = StreamId::parse(&field("latest")).ok();
        }
        _ => {}
    }
}
