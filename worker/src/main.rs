//! `weir-worker`: the process each worker pod runs.

fn main() {}
