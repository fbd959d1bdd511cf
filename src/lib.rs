//! ferry carries container images and BuildKit build caches across an air gap.
//!
//! There is one kind of thing ferry moves, a *content graph* (manifests that point at manifests and
//! blobs, all named by digest), and ferry keeps it in one format: a standard OCI image layout, in a
//! directory or in an S3-compatible bucket. The registry served by `ferry serve` is an HTTP front
//! over such a store, so the data directory and a portable (USB) directory are the same thing and
//! other tools (skopeo, BuildKit's `type=local` cache) can read what ferry writes.
//!
//! Module map:
//!
//! - [`digest`]: the `Digest` type (`sha256:…`, `sha512:…`), parsing, and streaming hashers.
//! - [`reference`](mod@reference): repository names and tags per the distribution-spec grammar.
//! - [`media`]: media types, "is this a manifest?", and the edges of the graph (children of a
//!   manifest), including BuildKit's legacy cache indexes whose children are blobs.
//! - [`location`]: the places a command names (`docker://…`, a directory, `s3://…`), parsed once;
//!   unknown schemes are refused by name.
//! - [`layout`]: the OCI image layout store — the registry's rules written once (blobs visible
//!   only after verification, references before manifests, tags last, upload sessions, GC
//!   promises) over two backends: a directory (`index.json` replaced atomically under a lock, and
//!   the one safe way to open a file of a layout that may be hostile media, `layout::read`) and a
//!   bucket (`layout::bucket`: one object per tag, multipart uploads whose state lives in the
//!   bucket, a marker protocol instead of a lock).
//! - [`server`]: the HTTP registry (OCI distribution-spec v1.1) over a [`layout::Store`]: routing,
//!   handlers, the error mapping, auth, limits, metrics, zero-copy downloads, signals, and the
//!   schedule a running server keeps (upload expiry, retention, GC).
//! - [`remote`]: a remote registry as a client (via oci-client), with credentials and TLS.
//! - [`sync`]: copying content graphs between places: only what is missing, verified, resumable,
//!   deltas (`--have`) and `inventory`.
//! - [`check`]: is everything a ref needs present and intact (and what a BuildKit cache holds).
//! - [`verify`], [`gc`], [`retention`]: re-hash and check a store; mark and sweep; which tags to
//!   let go.
//! - [`progress`]: counters long jobs advance, for the binary to show.
//! - [`ui`]: the mirror's read-only web page (`/`, `/ui/…`): what is on it, what each tag is
//!   and shares, server-rendered.
//! - [`archive`]: `oci-archive:` / `docker-archive:` tars, written in one planned pass,
//!   optionally as split volumes with a sha256sum index, read by offset.
//! - [`trip`]: signed trips (a minisign-signed statement of tags and blobs) and their check.
//! - [`proxy`]: pull-through from upstream registries (`serve --upstream`): names as mirrors
//!   send them, one fetch per blob streamed to every client while it arrives.
//! - [`record`]: what builds used and what the mirror could not answer (`ferry used`,
//!   `ferry misses`), as refs files the next trip takes.
//! - [`dockerfile`]: which images a Dockerfile needs, read as BuildKit reads it (`check
//!   --dockerfile`).
//! - [`tls`]: the server's certificate (reloadable) and `ferry tls init`'s private CA.
//! - [`gozip`]: Go's `compress/gzip`, byte for byte (both generations of its `compress/flate`),
//!   and recognising which Go wrote a gzip blob.
//! - [`error`]: the library's typed errors and their OCI error codes.
//!
//! The binary (`src/main.rs`, `src/cli/`) only parses flags, calls these, and prints reports.

pub mod archive;
pub mod check;
pub mod digest;
pub mod dockerfile;
pub mod duration;
pub mod error;
pub mod gc;
pub use ferry_gozip as gozip;
pub mod layout;
pub mod location;
pub mod media;
pub mod place;
pub mod progress;
pub mod proxy;
pub mod record;
pub mod reference;
pub mod remote;
pub mod retention;
pub mod server;
pub mod sync;
pub mod tls;
pub mod trip;
pub mod ui;
pub mod verify;

pub use error::{Error, Result};
