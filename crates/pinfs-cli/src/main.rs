//! The `pinfs` command (being written).
fn main() {}
