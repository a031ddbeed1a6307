//! The memory profile measured at load, against a fake model whose passes take a known
//! number of bytes per input element. Alone in its binary: see `hungry`.

mod hungry;

use hungry::{BYTES_PER_ELEMENT, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_measured_at_load_finds_the_bytes_a_pass_takes() {
    let (engine, _) = start(None).await;
    let profile = engine.memory_profile().expect("profiled at load");
    assert_eq!(profile.samples.len(), 4, "{profile:?}");
    let expected = BYTES_PER_ELEMENT as f64;
    assert!(
        (profile.per_element - expected).abs() / expected < 0.2,
        "measured {} bytes per element, the fake takes {expected}: {profile:?}",
        profile.per_element
    );
    assert!(profile.max_error() < 0.2, "{profile:?}");
}
