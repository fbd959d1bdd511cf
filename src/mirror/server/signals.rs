//! The signals a running server answers: SIGTERM and Ctrl-C stop it gracefully, SIGHUP re-reads
//! the TLS certificate.
//!
//! [`Signals::install`] registers every handler at once, and must be called before the listener
//! is bound and announced: a service manager (or a test) that sees the "listening" line may send
//! SIGHUP at once, and a signal without a handler kills the process (SIGHUP's default action).

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::mirror::tls::ServerTls;

pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Install the handlers (needs a Tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Split into the SIGHUP reloader (spawn it) and the shutdown future (give it to
    /// [`super::run`]).
    pub fn split(
        self,
        tls: Option<Arc<ServerTls>>,
    ) -> (
        impl std::future::Future<Output = ()> + Send + 'static,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Signals {
            hangup,
            mut terminate,
            mut interrupt,
        } = self;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
        };
        (reload_on_hangup(hangup, tls), shutdown)
    }
}

/// SIGHUP re-reads the TLS certificate and key (after a renewal); a bad pair keeps the old one.
/// Without TLS there is nothing to reload, but SIGHUP must still not kill the server, since
/// service managers send it as "reload".
async fn reload_on_hangup(mut hup: Signal, tls: Option<Arc<ServerTls>>) {
    while hup.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!(
                "SIGHUP: nothing to reload (no --tls-cert; --htpasswd is re-read when it changes)"
            );
            continue;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
            }
        }
    }
}
