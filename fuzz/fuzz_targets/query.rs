//! The `?region=..&since=..` parser of the WebSocket URL. Never panics; an accepted query
//! names one to eight distinct served-format regions and re-encodes to a query that parses
//! back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notify_gateway::handshake::ResumeQuery;

/// `--max-regions-per-connection`'s default.
const MAX_REGIONS: usize = 8;

fuzz_target!(|query: &str| {
    let Ok(parsed) = ResumeQuery::parse(Some(query), MAX_REGIONS) else {
        return;
    };
    assert!((1..=MAX_REGIONS).contains(&parsed.regions.len()));
    for (index, (region, _)) in parsed.regions.iter().enumerate() {
        let code = region.as_str();
        assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()));
        assert!(!parsed.regions[..index].iter().any(|(r, _)| r == region));
    }
    let again = ResumeQuery::parse(Some(&parsed.to_query()), MAX_REGIONS)
        .expect("re-encoded query refused");
    assert_eq!(again, parsed);
});
