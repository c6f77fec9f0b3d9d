//! Cache-line flush and fence primitives (being written).
