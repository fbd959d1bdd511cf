//! Keeping a store healthy: mark and sweep (`gc`), re-hashing and checking references
//! (`verify`), which tags to let go (`retention`), whether a ref is complete (`check`, with the
//! images a Dockerfile needs from `dockerfile`).

pub mod check;
pub mod dockerfile;
pub mod gc;
pub mod retention;
pub mod verify;
