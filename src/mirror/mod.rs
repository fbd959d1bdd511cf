//! The running mirror: the HTTP registry (`server`), its read-only web page (`ui`),
//! pull-through from upstreams (`proxy`), what builds used and what was missed (`record`), and its
//! TLS certificate (`tls`).

pub mod proxy;
pub mod record;
pub mod server;
pub mod tls;
pub mod ui;
