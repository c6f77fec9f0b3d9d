//! Recording media (being written).
#[derive(Debug)]
pub struct RecordingMedia;
