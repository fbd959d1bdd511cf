//! Request handlers: one function per endpoint and method, each a thin translation between HTTP and
//! [`crate::layout::Store`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::endpoint::{parse_endpoint, Endpoint};
use super::error::ApiError;
use super::limits::{guarded_body, ClientAddr, UploadPermit};
use super::range::{parse_content_range, parse_range, ByteRange};
use super::App;
use crate::error::Error;
use crate::vocab::digest::Digest;
use crate::vocab::media::{self, FERRY_ABSENT_HEADER};
use crate::vocab::reference::{truncate, Reference, RepoName};

type HResult = Result<Response, ApiError>;

/// Largest `n` honoured for pagination; larger requests get this many and a `Link` to the rest.
pub const MAX_PAGE: usize = 10_000;

/// `/readyz`: the data directory can be written (or, read-only, read) right now.
pub async fn readyz(app: Arc<App>) -> Response {
    if app.store.ready().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "data directory not usable\n",
        )
            .into_response()
    }
}

pub async fn handle(app: Arc<App>, req: Request) -> Response {
    match dispatch(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The query string as decoded pairs (`+` as a space), for the API and the web page.
pub(crate) fn query_params(req: &Request) -> Vec<(String, String)> {
    let q = req.uri().query().unwrap_or("");
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn unsupported_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "the method is not supported on this endpoint",
    )
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE
    )
}

fn repo(name: &str) -> Result<RepoName, ApiError> {
    Ok(RepoName::parse(name)?)
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>()
        .map_err(|e| Error::DigestInvalid(e.to_string()).into())
}

/// A digest in a *read* path (GET/HEAD/DELETE of a blob). A string that is not a digest names no
/// blob: the spec's answer to a blob that is not there is 404 (`DIGEST_INVALID` is about content
/// that does not match on upload), and the conformance suite and Distribution agree.
fn blob_name(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>().map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("no blob is named {:?} ({e})", truncate(s)),
        )
    })
}

/// A reference in a *read* path (GET/HEAD/DELETE of a manifest): one that is neither a valid tag
/// nor a valid digest names no manifest, so the answer is 404 `MANIFEST_UNKNOWN` (the conformance
/// suite's `.INVALID_MANIFEST_NAME`). A PUT to such a reference stays 400 (`put_manifest`).
fn manifest_name(s: &str) -> Result<Reference, ApiError> {
    Reference::parse(s).map_err(|_| Error::ManifestUnknown(truncate(s)).into())
}

/// A slot for an upload request (a body on its way to disk), or 429 TOOMANYREQUESTS.
fn upload_slot(app: &App, req: &Request) -> Result<UploadPermit, ApiError> {
    let client = req.extensions().get::<ClientAddr>().copied();
    Ok(app.uploads.acquire(client, &app.limits)?)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The address a request came from (the connection loop records it).
pub fn client_of(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<ClientAddr>().map(|c| c.0)
}

/// The credentials check every request passes (`--htpasswd`): reads need them unless anonymous
/// reads are allowed, writes always. The web page goes through it too. `Err` is the 401 to send.
pub async fn authorize(
    app: &Arc<App>,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    write: bool,
) -> Result<(), Response> {
    if let Some(auth) = &app.auth {
        let access = if write {
            super::auth::Access::Write
        } else {
            super::auth::Access::Read
        };
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let verdict = Some(auth.check(access, header, client).await);
        if verdict != Some(super::auth::Verdict::Allowed) {
            app.metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut res = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            )
            .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferry\""),
            );
            return Err(res);
        }
    }
    Ok(())
}

async fn dispatch(app: Arc<App>, req: Request) -> HResult {
    let Some(ep) = parse_endpoint(req.uri().path()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such endpoint",
        ));
    };
    let method = req.method().clone();
    if let Err(denied) = authorize(&app, req.headers(), client_of(&req), is_write(&method)).await {
        return Ok(denied);
    }
    if (app.store.read_only() || app.refuse_writes) && is_write(&method) {
        return Err(Error::Unsupported(
            "this registry is read-only (serving with --read-only); writes are refused".into(),
        )
        .into());
    }
    let head = method == Method::HEAD;
    match (ep, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => Ok(json_response(json!({}), None)),
        (Endpoint::Catalog, Method::GET) => catalog(&app, query_params(&req)).await,
        (Endpoint::Tags { name }, Method::GET) => {
            tags(&app, query_params(&req), &repo(&name)?).await
        }
        (Endpoint::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            let params = query_params(&req);
            let client = req
                .extensions()
                .get::<ClientAddr>()
                .map(|c| c.0.to_string());
            let asked = Asked {
                name: &repo(&name)?,
                ns: param(&params, "ns"),
                client,
                head,
            };
            get_manifest(&app, &asked, &reference, head).await
        }
        (Endpoint::Manifest { name, reference }, Method::PUT) => {
            put_manifest(&app, &repo(&name)?, &reference, req).await
        }
        (Endpoint::Manifest { name, reference }, Method::DELETE) => {
            let name = repo(&name)?;
            let r = manifest_name(&reference)?;
            app.store.delete_manifest(&name, &r).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Endpoint::Blob { name, digest: d }, Method::GET | Method::HEAD) => {
            let r = repo(&name)?;
            // HTTP/1 on plain TCP: the body can go out with sendfile.
            let zero_copy = req
                .extensions()
                .get::<Arc<super::zerocopy::Regions>>()
                .filter(|_| req.version() <= axum::http::Version::HTTP_11)
                .cloned();
            let d = blob_name(&d)?;
            let params = query_params(&req);
            let ns = param(&params, "ns");
            // Each repository answers only for what it holds (invariant 7), under the names a
            // mirror's request may mean, as manifests are looked up.
            // (The name as asked first: it is the answer for every push and pull of a local
            // repository, without working out a mirror's other names.)
            let held = if app.store.holds(&r, &d).await? {
                Some(r.clone())
            } else {
                holder(&app, &name, ns, &d).await?
            };
            if let Some(pull) = &app.pull {
                let seen = pull.ended();
                if held.is_none() || app.store.blob_size(&d).await?.is_none() {
                    if let Some(res) =
                        pull_blob(&app, pull, &name, ns, (&d, seen), req.headers(), head).await?
                    {
                        return Ok(res);
                    }
                }
            }
            // (After a pull-through that found the blob stored, ask again: it may be held now.)
            let held = match (held, &app.pull) {
                (None, Some(_)) => holder(&app, &name, ns, &d).await?,
                (h, _) => h,
            };
            if held.is_none() {
                return Err(Error::BlobUnknown(d).into());
            }
            get_blob(&app, &d, req.headers(), head, zero_copy).await
        }
        (Endpoint::Blob { name, digest: d }, Method::DELETE) => {
            let name = repo(&name)?;
            app.store.delete_blob(&name, &blob_name(&d)?).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Endpoint::UploadStart { name }, Method::POST) => {
            start_upload(&app, &repo(&name)?, req).await
        }
        (Endpoint::Upload { name, id }, Method::GET) => {
            let r = repo(&name)?;
            app.sessions.used(&id);
            let len = app.store.upload_status(&id).await?;
            Ok(upload_accepted(&r, &id, len, StatusCode::NO_CONTENT))
        }
        (Endpoint::Upload { name, id }, Method::PATCH) => {
            let r = repo(&name)?;
            let start = content_range_start(req.headers())?;
            let _slot = upload_slot(&app, &req)?;
            app.sessions.used(&id);
            let body = guarded_body(req.into_body(), &app.limits);
            let before = app.store.upload_status(&id).await.unwrap_or(0);
            let len = app.store.upload_append(&id, start, body).await;
            app.sessions.used(&id);
            let len = len?;
            app.metrics.bytes_in.fetch_add(
                len.saturating_sub(before),
                std::sync::atomic::Ordering::Relaxed,
            );
            Ok(upload_accepted(&r, &id, len, StatusCode::ACCEPTED))
        }
        (Endpoint::Upload { name, id }, Method::PUT) => {
            let r = repo(&name)?;
            let params = query_params(&req);
            let d =
                digest(param(&params, "digest").ok_or_else(|| {
                    Error::DigestInvalid("the closing PUT needs ?digest=".into())
                })?)?;
            let start = content_range_start(req.headers())?;
            let _slot = upload_slot(&app, &req)?;
            let body = guarded_body(req.into_body(), &app.limits);
            let before = app.store.upload_status(&id).await.unwrap_or(0);
            app.sessions.used(&id);
            let finished = app.store.upload_finish(&id, start, body, &d).await;
            if finished.is_ok() {
                app.sessions.closed(&id);
            } else {
                app.sessions.used(&id);
            }
            finished?;
            app.store.link_pushed(&r, &d).await?;
            count_in(&app, &d, before).await;
            Ok(blob_created(&r, &d))
        }
        (Endpoint::Upload { name, id }, Method::DELETE) => {
            repo(&name)?;
            app.store.upload_cancel(&id).await?;
            app.sessions.closed(&id);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Endpoint::Referrers { name, digest: d }, Method::GET) => {
            let r = repo(&name)?;
            let d = digest(&d)?;
            let params = query_params(&req);
            let filter = param(&params, "artifactType");
            let body = app.store.referrers(&r, &d, filter).await?;
            let mut res = (StatusCode::OK, body.to_string()).into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(media::OCI_INDEX),
            );
            if filter.is_some() {
                res.headers_mut().insert(
                    "OCI-Filters-Applied",
                    HeaderValue::from_static("artifactType"),
                );
            }
            Ok(res)
        }
        _ => Err(unsupported_method()),
    }
}

/// Which of the names a request may mean ([`crate::mirror::proxy::candidates`]) holds `d`, if any.
async fn holder(
    app: &App,
    name: &str,
    ns: Option<&str>,
    d: &Digest,
) -> Result<Option<RepoName>, ApiError> {
    for n in crate::mirror::proxy::candidates(name, ns) {
        let Ok(n) = RepoName::parse(&n) else { continue };
        if app.store.holds(&n, d).await? {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Count the bytes a finished upload received in this request (its size less what came before).
async fn count_in(app: &App, d: &Digest, before: u64) {
    if let Ok(Some(size)) = app.store.blob_size(d).await {
        app.metrics.bytes_in.fetch_add(
            size.saturating_sub(before),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

fn content_range_start(h: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match h.get(header::CONTENT_RANGE) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().unwrap_or("");
            let (start, _end) = parse_content_range(s).ok_or_else(|| {
                ApiError::from(Error::RangeInvalid(format!("bad Content-Range {s:?}")))
            })?;
            Ok(Some(start))
        }
    }
}

fn upload_location(r: &RepoName, id: &str) -> String {
    format!("/v2/{r}/blobs/uploads/{id}")
}

fn upload_accepted(r: &RepoName, id: &str, len: u64, status: StatusCode) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, hv(&upload_location(r, id)));
    h.insert(header::RANGE, hv(&format!("0-{}", len.saturating_sub(1))));
    h.insert("Docker-Upload-UUID", hv(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    res
}

fn blob_created(r: &RepoName, d: &Digest) -> Response {
    let mut res = StatusCode::CREATED.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{r}/blobs/{d}")));
    h.insert("Docker-Content-Digest", hv(&d.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    res
}

async fn start_upload(app: &App, r: &RepoName, req: Request) -> HResult {
    let params = query_params(&req);
    if let Some(m) = param(&params, "mount") {
        // A mount makes a blob of another repository this one's: with `from`, when that
        // repository holds it; without (automatic cross-mount), when the store has it at all.
        // Otherwise fall through to a new session, as the spec asks.
        if let Ok(d) = m.parse::<Digest>() {
            let from_holds = match param(&params, "from").map(RepoName::parse) {
                Some(Ok(from)) => app.store.holds(&from, &d).await?,
                Some(Err(_)) => false,
                None => true,
            };
            if from_holds && app.store.promise_blob(&d).await?.is_some() {
                app.store.link_pushed(r, &d).await?;
                return Ok(blob_created(r, &d));
            }
        }
    }
    if let Some(d) = param(&params, "digest") {
        let d = digest(d)?;
        let _slot = upload_slot(app, &req)?;
        let body = guarded_body(req.into_body(), &app.limits);
        app.store.put_blob(body, &d).await?;
        app.store.link_pushed(r, &d).await?;
        count_in(app, &d, 0).await;
        return Ok(blob_created(r, &d));
    }
    // Each session is a file and a table entry: cap them, so a client opening sessions in a
    // loop cannot grow either without bound. Abandoned ones expire (--upload-expiry). One client
    // (a user, else an address) has a bound of its own, so it cannot take everyone's sessions:
    // over it, its own idle sessions go first, and failing that it alone is refused.
    let who = client_key(app, &req);
    let mine = app.sessions.open_by(&who);
    if mine >= app.limits.max_sessions_per_client && reclaim(app, &who, 1).await == 0 {
        return Err(Error::TooManyRequests(format!(
            "{mine} upload sessions of {who} are open (limit {} per client); finish or cancel \
             some, or wait for idle ones to expire",
            app.limits.max_sessions_per_client
        ))
        .into());
    }
    let open = app.store.open_uploads();
    if open >= app.limits.max_sessions {
        // The busiest client's idle sessions make room first.
        if let Some((busiest, _)) = app.sessions.busiest() {
            reclaim(app, &busiest, open + 1 - app.limits.max_sessions).await;
        }
        let open = app.store.open_uploads();
        if open >= app.limits.max_sessions {
            return Err(Error::TooManyRequests(format!(
                "{open} upload sessions are open (limit {}); finish or cancel some, or wait for \
                 abandoned ones to expire",
                app.limits.max_sessions
            ))
            .into());
        }
    }
    let id = app.store.upload_start().await?;
    app.sessions.opened(&id, &who);
    Ok(upload_accepted(r, &id, 0, StatusCode::ACCEPTED))
}

/// Who a request counts against for open upload sessions: the user under `--htpasswd` (a build
/// farm behind one NAT address is many users), else the address.
fn client_key(app: &App, req: &Request) -> String {
    if app.auth.is_some() {
        let user = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|c| c.split_once(':').map(|(u, _)| u.to_owned()));
        if let Some(u) = user {
            return format!("user {u}");
        }
    }
    match client_of(req) {
        Some(a) => format!("address {a}"),
        None => "address unknown".to_owned(),
    }
}

/// Let go of up to `n` of `client`'s sessions that were idle long enough. Returns how many went.
async fn reclaim(app: &App, client: &str, n: usize) -> usize {
    let mut freed = 0;
    for id in app
        .sessions
        .idle_of(client, app.limits.session_reclaim_after)
        .into_iter()
        .take(n)
    {
        // Gone already (expired, finished elsewhere) counts as freed too.
        let _ = app.store.upload_cancel(&id).await;
        app.sessions.closed(&id);
        tracing::info!(client, session = %id, "idle upload session let go: its client is at its bound");
        freed += 1;
    }
    freed
}

async fn get_blob(
    app: &App,
    d: &Digest,
    headers: &HeaderMap,
    head: bool,
    zero_copy: Option<Arc<super::zerocopy::Regions>>,
) -> HResult {
    if head {
        // A HEAD answer is a promise that the blob exists (clients skip uploading it).
        app.store
            .promise_blob(d)
            .await?
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
    }
    if !head && app.redirect {
        // As Distribution's redirect middleware: the client fetches the bytes (and any Range)
        // from the store. Valid long enough for a slow start, short enough not to be shared.
        if let Some(url) = app
            .store
            .blob_url(d, std::time::Duration::from_secs(20 * 60))
            .await?
        {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let h = res.headers_mut();
            h.insert(header::LOCATION, hv(&url));
            h.insert("Docker-Content-Digest", hv(&d.to_string()));
            return Ok(res);
        }
    }
    app.store.check_served(d).await?;
    let blob = app.store.open_blob(d).await?;
    let len = blob.len;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(s) => match parse_range(s, len) {
            ByteRange::Whole => None,
            ByteRange::Part(a, b) => Some((a, b)),
            ByteRange::Unsatisfiable => {
                let mut res = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    format!("range {s:?} is outside the blob's {len} bytes"),
                )
                .into_response();
                res.headers_mut()
                    .insert(header::CONTENT_RANGE, hv(&format!("bytes */{len}")));
                return Ok(res);
            }
        },
    };
    let (status, start, count) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, len),
    };
    let body = match (head, zero_copy) {
        (true, _) => Body::empty(),
        (false, Some(regions)) => match blob.into_file() {
            Ok(file) => Body::from_stream(super::zerocopy::body(regions, file, start, count)),
            Err(blob) => Body::from_stream(blob.stream(start, count)),
        },
        (false, None) => Body::from_stream(blob.stream(start, count)),
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, hv(&count.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("Docker-Content-Digest", hv(&d.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{d}\"")));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((a, b)) = range {
        h.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/{len}")));
    }
    Ok(res)
}

/// Who asked for a manifest, and how.
struct Asked<'a> {
    name: &'a RepoName,
    /// `?ns=`: the registry the client means (containerd, BuildKit).
    ns: Option<&'a str>,
    client: Option<String>,
    head: bool,
}

fn is_absent(e: &Error) -> bool {
    matches!(e, Error::ManifestUnknown(_) | Error::NameUnknown(_))
}

/// Find a manifest under the names a mirror's request may mean ([`crate::mirror::proxy::candidates`]),
/// re-checking a pull-through tag whose TTL has passed; failing that, fetch it from the
/// upstream its name routes to. Records what was used, or the miss.
async fn resolve_manifest(
    app: &App,
    asked: &Asked<'_>,
    reference: &Reference,
) -> Result<(crate::layout::ManifestMeta, RepoName), ApiError> {
    let names: Vec<RepoName> = crate::mirror::proxy::candidates(asked.name.as_str(), asked.ns)
        .iter()
        .filter_map(|n| RepoName::parse(n).ok())
        .collect();
    let mut found = None;
    for n in &names {
        match app.store.manifest(n, reference).await {
            Ok(m) => {
                let m = match &app.pull {
                    Some(p) => p.refresh(&app.store, n, reference, m).await?,
                    None => m,
                };
                found = Some((m, n.clone()));
                break;
            }
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut failed = None;
    if found.is_none() {
        if let Some(p) = &app.pull {
            // A HEAD without `?ns=` may be a pushing client's "is it there?" about its own
            // repository: only a name that itself says which upstream it means goes out.
            let fetchable = |n: &RepoName| {
                p.route(n.as_str()).is_some()
                    && (!asked.head || asked.ns.is_some() || n == asked.name)
            };
            if let Some(n) = names.iter().find(|n| fetchable(n)) {
                match p.fetch_manifest(&app.store, n, reference).await {
                    Ok(Some(m)) => found = Some((m, n.clone())),
                    Ok(None) => {}
                    // Not answered is a miss, whoever is to blame.
                    Err(e) => failed = Some(e),
                }
            }
        }
    }
    match found {
        Some((m, n)) => {
            let upstream = app
                .pull
                .as_ref()
                .and_then(|p| p.route(n.as_str()))
                .map(|(u, _)| u.name.clone());
            app.record.used(
                upstream.as_deref(),
                n.as_str(),
                &reference.to_string(),
                &m.digest,
                asked.client.clone(),
            );
            Ok((m, n))
        }
        None => {
            app.record.missed(
                &crate::mirror::proxy::miss_name(asked.name.as_str(), asked.ns),
                &reference.to_string(),
            );
            Err(failed
                .unwrap_or_else(|| Error::ManifestUnknown(format!("{}:{reference}", asked.name)))
                .into())
        }
    }
}

/// A blob the store lacks, through pull-through (`None`: no upstream serves this name).
async fn pull_blob(
    app: &Arc<App>,
    pull: &Arc<crate::mirror::proxy::PullThrough>,
    name: &str,
    ns: Option<&str>,
    (d, seen): (&Digest, u64),
    headers: &HeaderMap,
    head: bool,
) -> Result<Option<Response>, ApiError> {
    // A HEAD is how a pushing client asks "do you have it?": only a name that says which
    // upstream it means (its first component, or `?ns=`) goes there, never a local repository
    // that happens to lack the blob. A GET may be a dockerd mirror request (`library/…`).
    let names = if head {
        let mut v = Vec::new();
        if ns.is_some() {
            v.extend(
                crate::mirror::proxy::candidates(name, ns)
                    .into_iter()
                    .take(1),
            );
        }
        v.push(name.to_owned());
        v
    } else {
        crate::mirror::proxy::candidates(name, ns)
    };
    let Some(n) = names.into_iter().find(|n| pull.route(n).is_some()) else {
        return Ok(None);
    };
    // A Range is not honoured while the blob is still arriving: the whole blob comes with a
    // 200, which HTTP allows and every client handles (it is stored, and ranged, by the next).
    let _ = headers;
    match pull.blob(app, &n, d, seen, 0, None).await? {
        crate::mirror::proxy::BlobAnswer::Stored => Ok(None),
        crate::mirror::proxy::BlobAnswer::Streaming(s) => {
            // The upstream serves it under this name: the name holds it once it is stored.
            if let Ok(rn) = RepoName::parse(&n) {
                app.store.link_pushed(&rn, d).await?;
            }
            let body = if head {
                Body::empty()
            } else {
                Body::from_stream(s.body)
            };
            let mut res = Response::new(body);
            let h = res.headers_mut();
            if let Some(len) = s.len {
                h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert("Docker-Content-Digest", hv(&d.to_string()));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            Ok(Some(res))
        }
    }
}

async fn get_manifest(app: &App, asked: &Asked<'_>, reference: &str, head: bool) -> HResult {
    let reference = manifest_name(reference)?;
    let (m, _) = resolve_manifest(app, asked, &reference).await?;
    app.store.note_read(&m.digest).await;
    // Stored bytes are served whatever `Accept` says (see fixtures/buildkit/traffic/accept-matrix):
    // real clients send `*/*` or the full list, and the bytes must never be converted.
    let body = if head {
        Body::empty()
    } else {
        let bytes = app.store.read_manifest(&m.digest).await?;
        if bytes.len() as u64 != m.size {
            return Err(Error::ManifestUnknown(reference.to_string()).into());
        }
        Body::from(bytes)
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, hv(&m.size.to_string()));
    h.insert("Docker-Content-Digest", hv(&m.digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    Ok(res)
}

async fn put_manifest(app: &App, r: &RepoName, reference: &str, req: Request) -> HResult {
    let reference = Reference::parse(reference)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `Ferry-Absent`: an image index pushed without some of its platforms on purpose
    // (`ferry sync --platform`), those manifests' digests; the rest must be held as usual.
    let absent: Vec<Digest> = match req.headers().get(FERRY_ABSENT_HEADER) {
        None => Vec::new(),
        Some(v) => v
            .to_str()
            .map_err(|_| Error::ManifestInvalid(format!("{FERRY_ABSENT_HEADER}: not text")))?
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<Digest>()
                    .map_err(|e| Error::ManifestInvalid(format!("{FERRY_ABSENT_HEADER}: {e}")))
            })
            .collect::<std::result::Result<_, _>>()?,
    };
    let limit = media::MAX_MANIFEST_BYTES as usize;
    let body = Body::from_stream(guarded_body(req.into_body(), &app.limits));
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            Error::ManifestTooLarge {
                size: limit as u64 + 1,
                limit: limit as u64,
            }
        } else {
            Error::ManifestInvalid(format!("reading the body failed: {e}"))
        }
    })?;
    let put = app
        .store
        .put_client_manifest(r, &reference, bytes, content_type.as_deref(), &absent)
        .await?;
    let mut res = StatusCode::CREATED.into_response();
    let h = res.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{r}/manifests/{}", put.digest)),
    );
    h.insert("Docker-Content-Digest", hv(&put.digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(s) = put.subject {
        h.insert("OCI-Subject", hv(&s.to_string()));
    }
    Ok(res)
}

/// `n` / `last` pagination over a sorted list, with the `Link` header for the next page.
fn paginate(
    params: &[(String, String)],
    items: Vec<&str>,
    path: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let n = match param(params, "n") {
        None => None,
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| Error::PaginationInvalid(format!("n={s:?}")))?
                .min(MAX_PAGE),
        ),
    };
    let last = param(params, "last");
    let after: Vec<&str> = items
        .into_iter()
        .filter(|t| last.is_none_or(|l| *t > l))
        .collect();
    let take = n.unwrap_or(usize::MAX);
    let page: Vec<String> = after.iter().take(take).map(|s| s.to_string()).collect();
    let link = match (n, page.last()) {
        (Some(n), Some(l)) if after.len() > page.len() => Some(format!(
            "<{path}?n={n}&last={}>; rel=\"next\"",
            percent_encoding::utf8_percent_encode(l, percent_encoding::NON_ALPHANUMERIC)
        )),
        _ => None,
    };
    Ok((page, link))
}

fn json_response(body: serde_json::Value, link: Option<String>) -> Response {
    let mut res = (StatusCode::OK, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(l) = link {
        res.headers_mut().insert(header::LINK, hv(&l));
    }
    res
}

async fn tags(app: &App, params: Vec<(String, String)>, r: &RepoName) -> HResult {
    let idx = app.store.index().await?;
    if !idx.has_repo(r.as_str()) {
        return Err(Error::NameUnknown(r.to_string()).into());
    }
    let (page, link) = paginate(
        &params,
        idx.tags_of(r.as_str()),
        &format!("/v2/{r}/tags/list"),
    )?;
    Ok(json_response(
        json!({ "name": r.as_str(), "tags": page }),
        link,
    ))
}

async fn catalog(app: &App, params: Vec<(String, String)>) -> HResult {
    let idx = app.store.index().await?;
    let (page, link) = paginate(&params, idx.repos().collect(), "/v2/_catalog")?;
    Ok(json_response(json!({ "repositories": page }), link))
}
