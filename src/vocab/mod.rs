//! The vocabulary every other part speaks: digests, repository names and references, media
//! types and the edges of a content graph, the places a command names, durations.

pub mod digest;
pub mod duration;
pub mod location;
pub mod media;
pub mod reference;
