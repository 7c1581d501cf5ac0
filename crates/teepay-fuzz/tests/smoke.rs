//! CI's short fuzzing smoke: every target, a few thousand mutated inputs each, no panic.
//! The long run is `cargo run --release -p teepay-fuzz -- --execs 10000000` (README).

#[test]
fn every_target_survives_a_short_fuzzing_run() {
    let corpus = teepay_fuzz::Corpus::build();
    let dir = std::env::temp_dir().join(format!("teepay-fuzz-smoke-{}", std::process::id()));
    let mut failed = Vec::new();
    for target in teepay_fuzz::TARGETS {
        let report = teepay_fuzz::run(target, &corpus, 3_000, 42, &dir);
        assert_eq!(report.execs, 3_000);
        if !report.panics.is_empty() {
            failed.push((target.name, report.panics));
        }
    }
    assert!(failed.is_empty(), "panicking inputs: {failed:?}");
}
