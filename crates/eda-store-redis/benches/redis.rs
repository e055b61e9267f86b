//! Redis store benchmarks (filled in below).
fn main() {}
