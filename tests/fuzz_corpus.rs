//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies on stable, so inputs that once crashed, hung or blew up memory stay fixed without a
//! fuzzing run. Fuzzing itself: `cargo +nightly fuzz run <target>` in `fuzz/`.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::time::{Duration, Instant};

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {name}");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let t0 = Instant::now();
            target(&data);
            // A hang in the fuzzer's sense (its default -timeout is 20 s per input).
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name}: {} took {:?}",
                f.display(),
                t0.elapsed()
            );
        }
    }
}
