//! Mapped pools (being written).
#[derive(Debug)]
pub struct MappedPool;
