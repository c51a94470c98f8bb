//! The `?region=..&since=..` parser of the WebSocket URL. Never panics; an accepted query
//! names a served-format region and re-encodes to a query that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notify_gateway::handshake::ResumeQuery;

fuzz_target!(|query: &str| {
    let Ok(parsed) = ResumeQuery::parse(Some(query)) else {
        return;
    };
    let region = parsed.region.as_str();
    assert!(region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase()));
    let again = ResumeQuery::parse(Some(&parsed.to_query())).expect("re-encoded query refused");
    assert_eq!(again, parsed);
});
