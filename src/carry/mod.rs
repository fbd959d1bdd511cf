//! Carrying content between places: `sync` (only what is missing, verified, resumable), the
//! places it reads and writes (`place`), remote registries as a client (`remote`), `oci-archive:`
//! and `docker-archive:` tars (`archive`), and signed trips (`trip`).

pub mod archive;
pub mod patch;
pub mod place;
pub mod remote;
pub mod sync;
pub mod trip;
