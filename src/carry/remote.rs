//! A remote registry, through `oci-client` (auth, bearer tokens, chunked pushes, ranged pulls).
//!
//! Credentials come from `--src-creds`/`--dest-creds`, else from `~/.docker/config.json`
//! (including credential helpers, via `docker_credential`), else anonymous. Loopback registries
//! are spoken to in plain HTTP, as docker and BuildKit do; `--plain-http` does the same for others.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciRef, RegistryOperation};

use crate::error::{Error, Result};
use crate::vocab::digest::Digest;
use crate::vocab::location::is_loopback_host;
use crate::vocab::media;
use crate::vocab::reference::Reference;

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    pub plain_http: bool,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    /// `USER:PASS`
    pub creds: Option<String>,
    /// A read from the registry that delivers nothing for this long fails (default
    /// [`IDLE_TIMEOUT`]); connecting has [`CONNECT_TIMEOUT`].
    pub idle_timeout: Option<std::time::Duration>,
}

/// How long a registry may leave a response without a byte before the read fails.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long connecting to a registry may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Registry {
    host: String,
    client: Client,
    /// The same client without credentials stored, for a registry that turned out to need none:
    /// oci-client asks `/v2/` again before every request to such a registry when it holds
    /// (anonymous) credentials for it, which added a round trip to every blob fetch.
    bare: Client,
    /// Anonymous access and `/v2/` answered without a challenge: requests go out on `bare`.
    open: std::sync::atomic::AtomicBool,
    auth: RegistryAuth,
    /// When the token flow last ran per repository and direction. Tokens expire (Docker Hub's
    /// after 300 s), so a long-running pull-through runs it again after [`AUTH_FOR`].
    authed: tokio::sync::Mutex<std::collections::HashMap<(String, bool), std::time::Instant>>,
    /// The bearer token the last token flow gave per repository (pulls), for requests ferry
    /// sends itself ([`Registry::fetch_manifest`]).
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// For the requests ferry sends itself: the same TLS settings and timeouts as oci-client's.
    http: reqwest::Client,
    /// `http` or `https`, as oci-client speaks to this host.
    scheme: &'static str,
    /// The registry answered the referrers API with 404: it has none (the spec forbids a 404
    /// from one that has it), so it is not asked again — one request per manifest, not two.
    no_referrers_api: std::sync::atomic::AtomicBool,
}

/// How long a token flow's result is trusted before it runs again.
const AUTH_FOR: std::time::Duration = std::time::Duration::from_secs(240);

/// A blob body coming from a registry. `partial` tells whether the registry honoured the range.
pub struct RemoteBlob {
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
    pub partial: bool,
    /// The body's length, when the registry sent a `Content-Length`.
    pub len: Option<u64>,
}

const MANIFEST_TYPES: [&str; 4] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

fn docker_config_auth(host: &str) -> RegistryAuth {
    let server =
        if host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io" {
            "https://index.docker.io/v1/"
        } else {
            host
        };
    match docker_credential::get_credential(server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
            RegistryAuth::Basic(u, p)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
        Err(_) => RegistryAuth::Anonymous,
    }
}

/// Whether the system has a CA store the TLS stack can load. Without one, reqwest's platform
/// verifier panics while building any client (even one used only for plain HTTP), and oci-client
/// offers no way around that; checking first turns the panic into an error that says what to do.
fn system_ca_store_present() -> bool {
    let env_ok = |k: &str| std::env::var_os(k).is_some_and(|p| std::path::Path::new(&p).exists());
    env_ok("SSL_CERT_FILE")
        || env_ok("SSL_CERT_DIR")
        || [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).is_file())
}

impl Registry {
    pub fn new(host: &str, opts: &RemoteOptions) -> Result<Registry> {
        if !system_ca_store_present() {
            return Err(Error::Usage(
                "no CA certificates found on this system: install the ca-certificates package or set SSL_CERT_FILE to a PEM bundle (the HTTP client needs one even for plain-HTTP registries)".into(),
            ));
        }
        let protocol = if opts.plain_http || is_loopback_host(host) {
            ClientProtocol::HttpsExcept(vec![host.to_owned()])
        } else {
            ClientProtocol::Https
        };
        let mut extra = Vec::new();
        if let Some(ca) = &opts.ca_file {
            let data = std::fs::read(ca)
                .map_err(|e| Error::Usage(format!("--ca-file {}: {e}", ca.display())))?;
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let idle = opts.idle_timeout.unwrap_or(IDLE_TIMEOUT);
        let config = || ClientConfig {
            read_timeout: Some(idle),
            connect_timeout: Some(CONNECT_TIMEOUT),
            protocol: protocol.clone(),
            // Blob sizes are always known from their descriptors, so a push is one streamed
            // request (POST, then PUT with the body) instead of a PATCH per 4 MiB chunk.
            use_monolithic_push: true,
            accept_invalid_certificates: opts.insecure,
            extra_root_certificates: extra.clone(),
            ..Default::default()
        };
        let auth = match &opts.creds {
            Some(c) => {
                let (u, p) = c
                    .split_once(':')
                    .ok_or_else(|| Error::Usage("credentials must be USER:PASS".into()))?;
                RegistryAuth::Basic(u.to_owned(), p.to_owned())
            }
            None => docker_config_auth(host),
        };
        let mut http = reqwest::Client::builder()
            .read_timeout(idle)
            .connect_timeout(CONNECT_TIMEOUT)
            .danger_accept_invalid_certs(opts.insecure)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if !extra.is_empty() {
            let mut certs = Vec::new();
            for c in &extra {
                certs.push(
                    reqwest::Certificate::from_pem(&c.data)
                        .map_err(|e| Error::Usage(format!("--ca-file: {e}")))?,
                );
            }
            http = http.tls_certs_merge(certs);
        }
        let http = http
            .build()
            .map_err(|e| Error::Usage(format!("the HTTP client for {host}: {e}")))?;
        let scheme = if opts.plain_http || is_loopback_host(host) {
            "http"
        } else {
            "https"
        };
        Ok(Registry {
            host: host.to_owned(),
            client: Client::new(config()),
            bare: Client::new(config()),
            open: Default::default(),
            auth,
            authed: Default::default(),
            tokens: Default::default(),
            http,
            scheme,
            no_referrers_api: Default::default(),
        })
    }

    /// The client for requests that take no credentials of their own (blobs, pushes): `bare`
    /// for an open registry. Manifest requests stay on `client`: oci-client stores credentials
    /// for them on whichever client runs them.
    fn c(&self) -> &Client {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) {
            &self.bare
        } else {
            &self.client
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Remote {
            registry: self.host.clone(),
            message: e.to_string(),
        }
    }

    fn oref(&self, repo: &str, reference: &Reference) -> OciRef {
        match reference {
            Reference::Tag(t) => OciRef::with_tag(self.host.clone(), repo.to_owned(), t.clone()),
            Reference::Digest(d) => {
                OciRef::with_digest(self.host.clone(), repo.to_owned(), d.to_string())
            }
        }
    }

    fn repo_ref(&self, repo: &str) -> OciRef {
        OciRef::with_tag(self.host.clone(), repo.to_owned(), "latest".to_owned())
    }

    /// Run the token flow once per repository and direction (a no-op for anonymous registries).
    async fn ensure_auth(&self, repo: &str, push: bool) -> Result<()> {
        let key = (repo.to_owned(), push);
        let mut done = self.authed.lock().await;
        if done.get(&key).is_some_and(|at| at.elapsed() < AUTH_FOR) {
            return Ok(());
        }
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        self.check_realm().await?;
        self.client
            .store_auth_if_needed(self.host.as_str(), &self.auth)
            .await;
        // Also for anonymous access: registries like Docker Hub hand out anonymous bearer tokens.
        // A registry that needs no auth answers /v2/ with 200 and this is one request.
        let token = self
            .client
            .auth(&self.repo_ref(repo), &self.auth, op)
            .await
            .map_err(|e| self.err(format!("authentication for {repo}: {}", chain(&e))))?;
        let open = token.is_none() && matches!(self.auth, RegistryAuth::Anonymous);
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
        if !push {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            match token {
                Some(t) => tokens.insert(repo.to_owned(), t),
                None => tokens.remove(repo),
            };
        }
        done.insert(key, std::time::Instant::now());
        Ok(())
    }

    /// Credentials go to the token service a registry's challenge names (its `realm`): refuse
    /// one that is plain HTTP when the registry itself is HTTPS, so a challenge cannot send
    /// `--upstream-creds` / `--src-creds` somewhere in clear text. (A plain-HTTP registry gets
    /// them in clear anyway: that was the user's choice.)
    async fn check_realm(&self) -> Result<()> {
        if self.scheme != "https" || !matches!(self.auth, RegistryAuth::Basic(..)) {
            return Ok(());
        }
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        let Ok(resp) = self.http.get(&url).send().await else {
            // Unreachable: the token flow itself will say so.
            return Ok(());
        };
        for v in resp.headers().get_all(reqwest::header::WWW_AUTHENTICATE) {
            if let Some(realm) = plain_http_realm(v.to_str().unwrap_or("")) {
                return Err(self.err(format!(
                    "its token service {realm} is plain HTTP; ferry does not send credentials there in clear text"
                )));
            }
        }
        Ok(())
    }

    /// Every repository (the catalog, all pages).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let any = self.repo_ref("library/x");
        loop {
            let page = self
                .client
                .catalog(&any, &self.auth, Some(1000), out.last().map(String::as_str))
                .await
                .map_err(|e| self.err(format!("catalog: {}", chain(&e))))?;
            let n = page.repositories.len();
            out.extend(page.repositories);
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    /// Every tag of a repository (all pages).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        self.ensure_auth(repo, false).await?;
        let mut out: Vec<String> = Vec::new();
        loop {
            let page = self
                .client
                .list_tags(
                    &self.repo_ref(repo),
                    &self.auth,
                    Some(1000),
                    out.last().map(String::as_str),
                )
                .await
                .map_err(|e| self.err(format!("tags of {repo}: {}", chain(&e))))?;
            let n = page.tags.len();
            out.extend(page.tags);
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    /// A manifest's exact bytes, its media type and its digest (verified).
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<(Bytes, String, Digest)> {
        match self.fetch_manifest(repo, reference).await? {
            Some((bytes, digest)) => self.checked(repo, reference, bytes, &digest),
            None => Err(Error::ManifestUnknown(format!(
                "{repo}:{reference} at {}",
                self.host
            ))),
        }
    }

    /// GET a manifest, its body read up to [`media::MAX_MANIFEST_BYTES`] and no further, each read
    /// bounded by the idle timeout: a registry that sends an endless or a stalled body ends with
    /// an error, not with ferry's memory or a client waiting for ever. (oci-client reads a body
    /// whole before anything can look at its size, which is why ferry sends this one itself,
    /// with the credentials oci-client's token flow produced.) `None`: the registry has no such
    /// manifest. Returns the bytes and the digest the registry named (or "").
    async fn fetch_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<(Bytes, String)>> {
        let got = self
            .fetch_bounded(
                repo,
                &format!("manifests/{reference}"),
                &MANIFEST_TYPES.join(", "),
                &format!("manifest {repo}:{reference}"),
                &[reqwest::StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(got.map(|(bytes, headers)| {
            let digest = headers
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (bytes, digest)
        }))
    }

    /// GET `/v2/<repo>/<path>` with the pull credentials, the body read up to
    /// [`media::MAX_MANIFEST_BYTES`] (see [`Registry::fetch_manifest`]). `None`: the registry
    /// answered one of `none` (404: it has no such thing).
    async fn fetch_bounded(
        &self,
        repo: &str,
        path: &str,
        accept: &str,
        what: &str,
        none: &[reqwest::StatusCode],
    ) -> Result<Option<(Bytes, reqwest::header::HeaderMap)>> {
        for attempt in 0..2 {
            self.ensure_auth(repo, false).await?;
            let url = if path.starts_with("/v2/") {
                format!("{}://{}{path}", self.scheme, self.host)
            } else {
                format!("{}://{}/v2/{repo}/{path}", self.scheme, self.host)
            };
            let mut req = self.http.get(&url).header(reqwest::header::ACCEPT, accept);
            let token = self
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(repo)
                .cloned();
            req = match (&token, &self.auth) {
                (Some(t), _) => req.bearer_auth(t),
                (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
                (None, _) => req,
            };
            let resp = req
                .send()
                .await
                .map_err(|e| self.err(format!("{what}: {}", chain(&e))))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                // A token that expired early: run the flow again, once.
                self.authed.lock().await.remove(&(repo.to_owned(), false));
                continue;
            }
            if none.contains(&status) {
                return Ok(None);
            }
            let limit = media::MAX_MANIFEST_BYTES;
            if let Some(len) = resp.content_length().filter(|l| *l > limit) {
                return Err(self.err(format!(
                    "{what}: the registry sends {len} bytes, over the {limit}-byte limit for a manifest"
                )));
            }
            let headers = resp.headers().clone();
            let mut body = resp.bytes_stream();
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.err(format!("{what}: {}", chain(&e))))?;
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(self.err(format!(
                        "{what}: the body goes past {limit} bytes, the limit for a manifest; not read further"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                let text = String::from_utf8_lossy(&buf[..buf.len().min(512)]).into_owned();
                return Err(self.err(format!("{what}: {status}: {}", text.trim())));
            }
            return Ok(Some((buf.freeze(), headers)));
        }
        Err(self.err(format!("{what}: 401 Unauthorized after a fresh token")))
    }

    /// The manifests whose `subject` is `subject`: the referrers API, else (a registry without
    /// it) the referrers tag schema's index (`<alg>-<hex>`).
    pub async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<media::Referrer>> {
        if let Some(list) = self.referrers_api(repo, subject).await? {
            return Ok(list);
        }
        let tag = Reference::Tag(media::referrers_tag(subject));
        match self.manifest_lookup(repo, &tag).await? {
            Some((bytes, mt, _)) if media::is_index_type(&mt) => media::parse_referrers(&bytes),
            _ => Ok(Vec::new()),
        }
    }

    /// The manifests whose `subject` is `subject`: the referrers API, every page (`None` when
    /// the registry has no referrers API: it answers 404).
    pub async fn referrers_api(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<media::Referrer>>> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.no_referrers_api.load(Relaxed) {
            return Ok(None);
        }
        let what = format!("referrers of {repo}@{subject}");
        let mut path = format!("referrers/{subject}");
        let mut out = Vec::new();
        // A registry that pages for ever is not followed for ever.
        for _ in 0..MAX_REFERRER_PAGES {
            // The API is optional: a registry without it answers 404 (the spec's word), or,
            // behind some front ends, 400, 401, 403, 405 or 501 for a path it does not know.
            // Then the referrers tag schema is read instead, whose answer names a real refusal.
            let Some((body, headers)) = self
                .fetch_bounded(repo, &path, media::OCI_INDEX, &what, NO_REFERRERS_API)
                .await?
            else {
                if out.is_empty() {
                    self.no_referrers_api.store(true, Relaxed);
                    return Ok(None);
                }
                return Ok(Some(out));
            };
            out.extend(
                media::parse_referrers(&body).map_err(|e| self.err(format!("{what}: {e}")))?,
            );
            match headers
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
            {
                Some(next) => path = next,
                None => return Ok(Some(out)),
            }
        }
        Err(self.err(format!(
            "{what}: more than {MAX_REFERRER_PAGES} pages of referrers"
        )))
    }

    /// Check pulled manifest bytes against the digest asked for (or the one the registry
    /// named), and tell their media type.
    fn checked(
        &self,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        digest: &str,
    ) -> Result<(Bytes, String, Digest)> {
        let expected = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(_) => digest
                .parse::<Digest>()
                .unwrap_or_else(|_| Digest::sha256_of(&bytes)),
        };
        let actual = Digest::of(expected.algorithm(), &bytes);
        if actual != expected {
            return Err(Error::Corrupt {
                digest: expected,
                detail: format!("{} served bytes hashing to {actual}", self.host),
            });
        }
        let mt = media::sniff_media_type(&bytes).ok_or_else(|| {
            Error::ManifestInvalid(format!("{repo}:{reference} is not a manifest ferry knows"))
        })?;
        Ok((bytes, mt, actual))
    }

    /// [`Registry::manifest`], with "the registry has no such manifest" as `None` and every
    /// other failure (unreachable, refused, corrupt) as an error.
    pub async fn manifest_lookup(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<(Bytes, String, Digest)>> {
        match self.fetch_manifest(repo, reference).await? {
            None => Ok(None),
            Some((bytes, digest)) => self.checked(repo, reference, bytes, &digest).map(Some),
        }
    }

    /// The digest a tag resolves to now (HEAD): `None` when the registry has no such manifest,
    /// an error when it could not be asked.
    pub async fn manifest_head(&self, repo: &str, reference: &Reference) -> Result<Option<Digest>> {
        self.ensure_auth(repo, false).await?;
        match self
            .client
            .fetch_manifest_digest(&self.oref(repo, reference), &self.auth)
            .await
        {
            Ok(d) => d
                .parse()
                .map(Some)
                .map_err(|e| self.err(format!("HEAD {repo}:{reference}: digest {d:?}: {e}"))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err(format!("HEAD {repo}:{reference}: {}", chain(&e)))),
        }
    }

    /// The digest a tag or digest resolves to (HEAD), or `None` when the registry lacks it.
    pub async fn manifest_digest(&self, repo: &str, reference: &Reference) -> Option<Digest> {
        self.ensure_auth(repo, false).await.ok()?;
        self.client
            .fetch_manifest_digest(&self.oref(repo, reference), &self.auth)
            .await
            .ok()?
            .parse()
            .ok()
    }

    pub async fn has_blob(&self, repo: &str, d: &Digest) -> Result<bool> {
        self.ensure_auth(repo, false).await?;
        self.c()
            .blob_exists(&self.repo_ref(repo), &d.to_string())
            .await
            .map_err(|e| self.err(format!("HEAD {d}: {}", chain(&e))))
    }

    /// A blob from `offset` on. Always sent with a `Range`, so the bytes are hashed once, by the
    /// caller, whether the registry answers 206 or 200.
    pub async fn blob(&self, repo: &str, d: &Digest, offset: u64) -> Result<RemoteBlob> {
        self.ensure_auth(repo, false).await?;
        let resp = self
            .c()
            .pull_blob_stream_partial(&self.repo_ref(repo), d.to_string().as_str(), offset, None)
            .await
            .map_err(|e| self.err(format!("GET {d}: {}", chain(&e))))?;
        Ok(match resp {
            oci_client::client::BlobResponse::Partial(s) => RemoteBlob {
                len: s.content_length,
                stream: s.stream,
                partial: true,
            },
            oci_client::client::BlobResponse::Full(s) => RemoteBlob {
                len: s.content_length,
                stream: s.stream,
                partial: offset == 0,
            },
        })
    }

    /// [`Registry::blob`] from its start, with "the registry has no such blob" as `None`.
    pub async fn blob_lookup(&self, repo: &str, d: &Digest) -> Result<Option<RemoteBlob>> {
        self.ensure_auth(repo, false).await?;
        match self
            .c()
            .pull_blob_stream_partial(&self.repo_ref(repo), d.to_string().as_str(), 0, None)
            .await
        {
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err(format!("GET {d}: {}", chain(&e)))),
            Ok(oci_client::client::BlobResponse::Partial(s))
            | Ok(oci_client::client::BlobResponse::Full(s)) => Ok(Some(RemoteBlob {
                len: s.content_length,
                stream: s.stream,
                partial: true,
            })),
        }
    }

    /// Push a blob of known size from a stream (POST, then one streamed PUT ?digest=).
    pub async fn push_blob<S>(&self, repo: &str, d: &Digest, size: u64, body: S) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        self.ensure_auth(repo, true).await?;
        let body = body.map(|r| r.map_err(oci_client::errors::OciDistributionError::from));
        self.c()
            .push_blob_stream(&self.repo_ref(repo), body, &d.to_string(), Some(size))
            .await
            .map_err(|e| self.err(format!("push {d}: {}", chain(&e))))?;
        Ok(())
    }

    /// Cross-repository mount; `false` when the registry did not mount (it then answers 202).
    pub async fn mount(&self, repo: &str, from: &str, d: &Digest) -> bool {
        if self.ensure_auth(repo, true).await.is_err() {
            return false;
        }
        self.c()
            .mount_blob(&self.repo_ref(repo), &self.repo_ref(from), &d.to_string())
            .await
            .is_ok()
    }

    /// PUT an image index without some of its children, naming them in
    /// [`media::FERRY_ABSENT_HEADER`]: a ferry registry records them as left out on purpose;
    /// another registry refuses the index (its children are missing), and the error says so.
    /// Sent by ferry itself (oci-client sends no extra headers), with the `--dest-creds`.
    pub async fn put_manifest_absent(
        &self,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
        absent: &[Digest],
    ) -> Result<()> {
        let url = format!(
            "{}://{}/v2/{repo}/manifests/{reference}",
            self.scheme, self.host
        );
        let list: Vec<String> = absent.iter().map(ToString::to_string).collect();
        let mut req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .header(media::FERRY_ABSENT_HEADER, list.join(","))
            .body(bytes);
        if let RegistryAuth::Basic(u, p) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let what = format!("put manifest {repo}:{reference}");
        let resp = req
            .send()
            .await
            .map_err(|e| self.err(format!("{what}: {}", chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(512).collect();
        Err(self.err(format!(
            "{what}: {status}: {}; the index was carried without {} of its manifests \
             (--platform), which only a ferry registry (or a directory) takes",
            text.trim(),
            absent.len()
        )))
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        self.ensure_auth(repo, true).await?;
        let ct = axum::http::HeaderValue::from_str(media_type)
            .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        self.c()
            .push_manifest_raw(&self.oref(repo, reference), bytes, ct)
            .await
            .map_err(|e| self.err(format!("put manifest {repo}:{reference}: {}", chain(&e))))?;
        Ok(())
    }
}

/// Answers to the referrers API that mean the registry has none (see [`Registry::referrers_api`]).
const NO_REFERRERS_API: &[reqwest::StatusCode] = &[
    reqwest::StatusCode::NOT_FOUND,
    reqwest::StatusCode::BAD_REQUEST,
    reqwest::StatusCode::UNAUTHORIZED,
    reqwest::StatusCode::FORBIDDEN,
    reqwest::StatusCode::METHOD_NOT_ALLOWED,
    reqwest::StatusCode::NOT_IMPLEMENTED,
];

/// At most this many pages of one manifest's referrers are read.
const MAX_REFERRER_PAGES: usize = 100;

/// The path of a `Link: </v2/…>; rel="next"` header, when it stays on the registry.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        if !params.replace(' ', "").contains("rel=\"next\"") {
            return None;
        }
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        // A path on this registry only: an absolute URL could send credentials elsewhere.
        url.starts_with("/v2/").then(|| url.to_owned())
    })
}

/// "No such manifest" as a registry says it (404, or an error body naming it unknown).
/// The `realm` of a `WWW-Authenticate` challenge when it is a plain-HTTP address.
fn plain_http_realm(challenge: &str) -> Option<String> {
    let lower = challenge.to_ascii_lowercase();
    let at = lower.find("realm=")? + "realm=".len();
    let rest = challenge[at..].trim_start();
    let realm = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next().unwrap_or(""),
        None => rest.split([',', ' ']).next().unwrap_or(""),
    };
    realm
        .to_ascii_lowercase()
        .starts_with("http://")
        .then(|| realm.to_owned())
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown
            )
        }),
        _ => false,
    }
}

/// An error with its causes (`error sending request: … : invalid peer certificate: UnknownIssuer`):
/// the HTTP client's top-level message alone hides what went wrong with TLS or the network.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::plain_http_realm;

    #[test]
    fn a_plain_http_token_realm_is_seen() {
        assert_eq!(
            plain_http_realm(r#"Bearer realm="http://auth.example/token",service="r""#).as_deref(),
            Some("http://auth.example/token")
        );
        assert_eq!(
            plain_http_realm("Bearer Realm=HTTP://a/t, service=x").as_deref(),
            Some("HTTP://a/t")
        );
        assert_eq!(
            plain_http_realm(r#"Bearer realm="https://auth.docker.io/token""#),
            None
        );
        assert_eq!(plain_http_realm(r#"Basic realm="ferry""#), None);
        assert_eq!(plain_http_realm("Bearer service=x"), None);
    }
}
