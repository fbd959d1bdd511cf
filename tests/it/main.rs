//! ferry's integration tests: one binary, modules per area, helpers in `common`.
//!
//! Tests that need an external tool (skopeo, dockerd, Distribution) find it on the machine; when it
//! is missing they say so and pass only if `FERRY_REQUIRE_INTEROP` is unset. `.ci/run` sets it, so
//! in CI a missing tool is a failure, never a silent skip.

#[macro_use]
mod common;

mod compose;

mod api;
mod archive;
mod auth;
mod faults;
mod fixtures;
mod gozip;
mod hostile;
mod hostile_media;
mod integrity;
mod interop_docker;
mod interop_skopeo;
mod limits;
mod load;
mod oci_client;
mod patches;
mod patches_docker;
mod platforms;
mod process;
mod pull_through;
mod referrers;
mod replicas;
mod s3_faults;
mod s3_lb;
mod shared_mirror;
mod signing;
mod storage;
mod sync;
mod tls;
mod trip;
mod ui;
mod upstream;
