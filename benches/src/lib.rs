//! Benchmarks live in benches/benches; run with `cargo bench -p boltzflow-benches`.
