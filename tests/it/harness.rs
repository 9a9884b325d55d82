//! The test harness itself: a config change a test asks for either happens or fails the test.
//! Configs are written as TOML text (`support::config` + `Edit`) and parsed by the gateway's
//! own loader, which refuses unknown keys at every level; an edit whose needle is missing
//! panics instead of silently leaving the config as it was.

use crate::support::*;

#[tokio::test]
#[should_panic(expected = "valid test config")]
async fn a_misspelt_config_key_fails_the_test_loudly() {
    let cfg = config("http://127.0.0.1:1", "").edit("ttl = \"60s\"", "tll = \"60s\"");
    Harness::start(&cfg).await;
}

#[tokio::test]
#[should_panic(expected = "valid test config")]
async fn a_key_in_the_wrong_section_fails_the_test_loudly() {
    let cfg = config("http://127.0.0.1:1", "").edit("retries = 0", "retries = 0\nburst = 3");
    Harness::start(&cfg).await;
}

#[test]
#[should_panic(expected = "is not in the config")]
fn an_edit_whose_needle_is_missing_fails_loudly() {
    let _ = config("http://127.0.0.1:1", "").edit("timeout = \"9s\"", "timeout = \"1s\"");
}
