//! The lease engine (being written).
