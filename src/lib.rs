//! ferry carries container images and BuildKit build caches across an air gap.
//!
//! There is one kind of thing ferry moves, a *content graph* (manifests that point at manifests and
//! blobs, all named by digest), and ferry keeps it in one format: a standard OCI image layout, in a
//! directory or in an S3-compatible bucket. The registry served by `ferry serve` is an HTTP front
//! over such a store, so the data directory and a portable (USB) directory are the same thing and
//! other tools (skopeo, BuildKit's `type=local` cache) can read what ferry writes.
//!
//! Module map, by what the code serves (each folder's `mod.rs` says more; ARCHITECTURE.md is the
//! tour):
//!
//! - [`vocab`]: the words every part speaks. [`digest`] (`sha256:…`, streaming hashers),
//!   [`reference`](mod@reference) (repository names and tags per the distribution-spec grammar),
//!   [`media`] (media types, "is this a manifest?", the edges of the graph, BuildKit's legacy cache
//!   indexes whose children are blobs), [`location`] (the places a command names, parsed once;
//!   unknown schemes refused by name), [`duration`] (`30s`, `7d`).
//! - [`layout`]: the store. The OCI image layout with the registry's rules written once (blobs
//!   visible only after verification, references before manifests, tags last, upload sessions, GC
//!   promises, what each repository holds) over a directory, a bucket (`layout::bucket`) or a
//!   read-only archive; its content graph (`layout::graph`).
//! - [`carry`]: moving content between places. [`sync`] (only what is missing, verified,
//!   resumable; deltas with `--have`; `inventory`), [`place`] (a store, a registry or an archive,
//!   opened once), [`remote`] (a registry as a client, with credentials and TLS), [`archive`]
//!   (`oci-archive:` / `docker-archive:` tars, split volumes), [`trip`] (signed trips).
//! - [`mirror`]: the running mirror. [`server`] (OCI distribution-spec v1.1: routing, handlers,
//!   the error mapping, auth, limits, metrics, zero-copy downloads, signals, the schedule),
//!   [`ui`] (the read-only web page), [`proxy`] (pull-through from upstream registries),
//!   [`record`] (what builds used and what was missed, as refs files), [`tls`] (the server's
//!   certificate, `ferry tls init`'s private CA).
//! - [`keep`]: keeping a store healthy. [`gc`] (mark and sweep), [`verify`] (re-hash, check
//!   references), [`retention`] (which tags to let go), [`check`] (is a ref complete; what a
//!   BuildKit cache holds), [`dockerfile`] (which images a Dockerfile needs, read as BuildKit
//!   reads it).
//! - [`gozip`] (the `ferry-gozip` crate): Go's `compress/gzip`, byte for byte, and recognising
//!   which Go wrote a gzip blob.
//! - [`progress`]: counters long jobs advance, for the binary to show. [`error`]: the library's
//!   typed errors and their OCI error codes.
//!
//! The binary (`src/main.rs`, `src/cli/`) only parses flags, calls these, and prints reports.
//! Every module is also reachable at the top (`ferry::sync`, `ferry::server`, …), as it was
//! before the folders.

pub mod carry;
pub mod error;
pub mod keep;
pub mod layout;
pub mod mirror;
pub mod progress;
pub mod vocab;

pub use carry::{archive, patch, place, remote, sync, trip};
pub use ferry_gozip as gozip;
pub use keep::{check, dockerfile, gc, retention, verify};
pub use mirror::{proxy, record, server, tls, ui};
pub use vocab::{digest, duration, location, media, reference};

pub use error::{Error, Result};
