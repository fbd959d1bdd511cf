//! Shared helpers: an in-process registry on `127.0.0.1:0`, small HTTP helpers, tool lookup.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry::digest::Digest;
use ferry::layout::Store;
use ferry::server::App;
use reqwest::StatusCode;

#[derive(Default)]
pub struct ServerOpts {
    pub read_only: bool,
    pub auth: Option<ferry::server::auth::Htpasswd>,
    pub limits: ferry::server::limits::Limits,
    pub tls: Option<Arc<ferry::tls::ServerTls>>,
    /// Address to bind (default `127.0.0.1:0`).
    pub bind: Option<String>,
    /// `--redirect`.
    pub redirect: bool,
    /// `--upstream …`.
    pub pull: Option<ferry::proxy::PullThrough>,
    /// `--read-only` beside `--upstream`: clients' writes refused, the store writable.
    pub refuse_writes: bool,
}

pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// The data directory (for an S3-backed server: an unused path).
    pub dir: PathBuf,
    /// The key prefix in the test bucket, for an S3-backed server.
    pub prefix: Option<String>,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The running registry's state (its recorder, its pull-through counters).
    pub app: Arc<App>,
}

impl TestServer {
    /// A registry on a fresh temporary data directory.
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = TestServer::start_on(&dir, false).await;
        s._tmp = Some(tmp);
        s
    }

    /// A registry on an existing directory.
    pub async fn start_on(dir: &Path, read_only: bool) -> TestServer {
        TestServer::start_with(dir, read_only, None).await
    }

    /// A registry with `--htpasswd` (and maybe `--anonymous-read`).
    pub async fn start_with(
        dir: &Path,
        read_only: bool,
        auth: Option<ferry::server::auth::Htpasswd>,
    ) -> TestServer {
        TestServer::start_opts(
            dir,
            ServerOpts {
                read_only,
                auth,
                ..Default::default()
            },
        )
        .await
    }

    /// A registry on a fresh store of the given backend; `None` (a visible skip, a failure
    /// under `FERRY_REQUIRE_INTEROP=1`) when S3 is asked for and Garage is not installed.
    pub async fn start_in(b: Backend) -> Option<TestServer> {
        match b {
            Backend::Dir => Some(TestServer::start().await),
            Backend::S3 => {
                let g = garage()?;
                let prefix = fresh_prefix();
                let store = open_s3(g, &prefix, false).await;
                let tmp = tempfile::tempdir().expect("tempdir");
                let mut s = TestServer::serve_store(
                    store,
                    tmp.path().join("unused"),
                    ServerOpts::default(),
                )
                .await;
                s.prefix = Some(prefix);
                s._tmp = Some(tmp);
                Some(s)
            }
        }
    }

    /// A registry (a replica) on `s3://ferry/<prefix>` of the test cluster, with `serve`'s
    /// options.
    pub async fn start_s3(g: &Garage, prefix: &str, opts: ServerOpts) -> TestServer {
        TestServer::start_s3_with(&g.settings, prefix, opts).await
    }

    /// [`TestServer::start_s3`] with other S3 settings (another endpoint, timeouts).
    pub async fn start_s3_with(
        settings: &[(String, String)],
        prefix: &str,
        opts: ServerOpts,
    ) -> TestServer {
        let loc = ferry::location::Location::parse(&format!("s3://ferry/{prefix}")).unwrap();
        let store = Store::open_at_with(&loc, opts.read_only, settings)
            .await
            .expect("open the S3 store");
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::serve_store(store, tmp.path().join("unused"), opts).await;
        s.prefix = Some(prefix.to_owned());
        s._tmp = Some(tmp);
        s
    }

    /// Another store on the same data (a second process or replica).
    pub async fn other_store(&self) -> Store {
        match &self.prefix {
            None => Store::open(&self.dir, false).expect("open store"),
            Some(p) => open_s3(garage().expect("garage"), p, false).await,
        }
    }

    /// The data's location as `ferry` takes it.
    pub fn location(&self) -> String {
        match &self.prefix {
            None => self.dir.display().to_string(),
            Some(p) => format!("s3://ferry/{p}"),
        }
    }

    /// What clean operations leave nothing of: upload sessions and temp files.
    pub async fn leftovers(&self) -> Vec<String> {
        match &self.prefix {
            None => leftovers(&self.dir)
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Some(p) => {
                garage()
                    .expect("garage")
                    .keys(&format!("{p}.ferry/uploads/"))
                    .await
            }
        }
    }

    /// The records as `index.json` holds them (a bucket's, gathered from its record objects).
    pub async fn index_json(&self) -> serde_json::Value {
        match &self.prefix {
            None => serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap())
                .unwrap(),
            Some(_) => {
                serde_json::to_value(&self.other_store().await.index().await.unwrap().file).unwrap()
            }
        }
    }

    /// Hex names of the stored blobs of one algorithm.
    pub async fn blob_hexes(&self, alg: &str) -> Vec<String> {
        let mut v: Vec<String> = match &self.prefix {
            None => std::fs::read_dir(self.dir.join("blobs").join(alg))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            Some(p) => {
                garage()
                    .expect("garage")
                    .keys(&format!("{p}blobs/{alg}/"))
                    .await
            }
        };
        v.sort();
        v
    }

    /// A registry with any of `serve`'s options.
    pub async fn start_opts(dir: &Path, opts: ServerOpts) -> TestServer {
        let store = Store::open(dir, opts.read_only).expect("open store");
        TestServer::serve_store(store, dir.to_owned(), opts).await
    }

    pub async fn serve_store(store: Store, dir: PathBuf, opts: ServerOpts) -> TestServer {
        let listener = tokio::net::TcpListener::bind(opts.bind.as_deref().unwrap_or("127.0.0.1:0"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Arc::new(
            App::new(store, opts.auth)
                .with_limits(opts.limits)
                .with_redirect(opts.redirect)
                .with_pull_through(opts.pull)
                .with_refuse_writes(opts.refuse_writes),
        );
        {
            let a = app.clone();
            tokio::task::spawn_blocking(move || a.record.load_sync(&a.store))
                .await
                .unwrap();
        }
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let a2 = app.clone();
        let task = tokio::spawn(async move {
            let res = ferry::server::run(listener, a2.clone(), opts.tls, async {
                let _ = rx.await;
            })
            .await;
            // As `ferry serve` does on its way out.
            let a3 = a2.clone();
            let _ = tokio::task::spawn_blocking(move || a3.record.flush_sync(&a3.store)).await;
            res
        });
        TestServer {
            url: format!("{scheme}://{addr}"),
            addr,
            dir,
            prefix: None,
            _tmp: None,
            stop: Some(tx),
            task: Some(task),
            app,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("server run");
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// One counter or gauge from the server's `/metrics`.
pub async fn metric(url: &str, name: &str) -> u64 {
    let text = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn sha256(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `ferry sync`'s options as most tests use them: 4 blobs at once, the rest as the CLI's defaults.
pub fn sync_opts() -> ferry::sync::SyncOptions {
    ferry::sync::SyncOptions {
        jobs: 4,
        ..Default::default()
    }
}

/// Sync between two locations written as on the command line; panics naming both on an error
/// (a failed ref is in the summary, for the test to look at).
pub async fn sync_run(src: &str, dst: &str, o: &ferry::sync::SyncOptions) -> ferry::sync::Summary {
    ferry::sync::sync(
        &ferry::location::Location::parse(src).unwrap(),
        &ferry::location::Location::parse(dst).unwrap(),
        o,
        &ferry::sync::Quiet,
    )
    .await
    .unwrap_or_else(|e| panic!("sync {src} -> {dst}: {e}"))
}

/// Monolithic upload (`POST ?digest=`); returns the digest.
pub async fn push_blob(url: &str, repo: &str, data: &[u8]) -> Digest {
    let d = sha256(data);
    let r = http()
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("push blob");
    assert_eq!(r.status(), StatusCode::CREATED, "push blob {d}");
    d
}

pub async fn put_manifest(
    url: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> reqwest::Response {
    http()
        .put(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("put manifest")
}

/// An OCI image manifest over the given config and layers (all as bytes already pushed).
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256(b).to_string(), "size": b.len()});
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    }))
    .expect("json")
}

/// Push config + layers + manifest under `repo:tag`; returns the manifest bytes.
pub async fn push_image(url: &str, repo: &str, tag: &str, seed: u64) -> Vec<u8> {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(3000, seed);
    push_blob(url, repo, &config).await;
    push_blob(url, repo, &layer).await;
    let m = image_manifest(&config, &[&layer]);
    let r = put_manifest(
        url,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    m
}

/// The error code of an OCI error body.
/// The digest of what `GET /v2/REPO/blobs/DIGEST` answers (following redirects), to compare
/// with the digest asked for.
pub async fn digest_served(url: &str, repo: &str, d: &Digest) -> Digest {
    let body = reqwest::get(format!("{url}/v2/{repo}/blobs/{d}"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    sha256(&body)
}

pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/buildkit")
}

pub fn require_interop() -> bool {
    std::env::var("FERRY_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Find an external tool. Missing: a failure under `FERRY_REQUIRE_INTEROP=1`, else a visible skip.
pub fn tool(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = PathBuf::from(c);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if require_interop() {
        panic!("{name} is required (FERRY_REQUIRE_INTEROP=1) but was not found");
    }
    eprintln!("SKIPPED: {name} not found (set FERRY_REQUIRE_INTEROP=1 to make this a failure)");
    None
}

/// Every file below `dir` (relative path → sha256), for before/after comparisons of a store.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    // Every entry by what it is: a regular file by its digest, anything else (a FIFO, a socket, a
    // symlink) by its type and target, never opened (a FIFO would block the test forever).
    fn walk(base: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        use std::os::unix::fs::FileTypeExt;
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_symlink() {
                let to = std::fs::read_link(&p).map(|t| t.display().to_string());
                out.insert(rel, format!("symlink -> {}", to.unwrap_or_default()));
            } else if ft.is_fifo() || ft.is_socket() {
                out.insert(rel, format!("special {:?}", ft));
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(rel, sha256(&b).to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Files in the private temp and upload areas (should be empty after clean operations).
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in [".ferry/tmp", ".ferry/uploads"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            v.extend(rd.flatten().map(|e| e.path()));
        }
    }
    v
}

/// Send raw bytes as one HTTP/1.1 request (no client-side path normalization) and return the
/// status code and the whole response text.
pub async fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    raw_exchange(addr, request, false).await
}

/// [`raw_request`], optionally closing the sending side after the bytes (so a body shorter than
/// its Content-Length ends there). Complete requests must not: hyper drops the response when a
/// client half-closes before it is written.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    half_close: bool,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = c.write_all(request).await;
    if half_close {
        let _ = c.shutdown().await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// CNCF Distribution (Debian's `docker-registry`) on a free loopback port, storing in a temp dir.
pub struct Distribution {
    pub url: String,
    pub host: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Option<Distribution> {
        Distribution::start_with("")
    }

    /// With `auth: htpasswd:` for one user (bcrypt), as a private upstream would be.
    pub fn start_htpasswd(user: &str, pass: &str) -> Option<Distribution> {
        let f = tempfile::NamedTempFile::new()
            .expect("htpasswd")
            .into_temp_path()
            .keep()
            .expect("keep");
        std::fs::write(
            &f,
            format!("{user}:{}\n", bcrypt::hash(pass, 6).expect("bcrypt")),
        )
        .expect("write htpasswd");
        Distribution::start_with(&format!(
            "auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
            f.display()
        ))
    }

    fn start_with(extra_config: &str) -> Option<Distribution> {
        let bin = tool("docker-registry", &["/usr/bin/docker-registry"])?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra_config}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let d = Distribution {
            url: format!("http://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&d.host).is_ok() {
                return Some(d);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("Distribution did not start on {}", d.host);
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This machine's first non-loopback IPv4 address. TLS tests need one: clients (ferry sync, docker)
/// treat loopback registries as plain-HTTP/insecure and would never check a certificate there.
pub fn lan_ip() -> Option<std::net::IpAddr> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// [`lan_ip`], or a failure under `FERRY_REQUIRE_INTEROP=1` / a visible skip otherwise.
pub fn require_lan_ip(test: &str) -> Option<std::net::IpAddr> {
    let ip = lan_ip();
    if ip.is_none() {
        assert!(
            !require_interop(),
            "{test}: no non-loopback IPv4 address (hostname -I) and FERRY_REQUIRE_INTEROP=1"
        );
        eprintln!("SKIPPED {test}: no non-loopback IPv4 address on this machine");
    }
    ip
}

// ------------------------------------------------------------------ S3 (a real Garage cluster)

/// Where a test's registry keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Dir,
    S3,
}

/// A 3-node Garage cluster on loopback (tests/garage.sh), one per test process, and the AWS
/// settings that reach it.
pub struct Garage {
    pub dir: PathBuf,
    pub settings: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Garage {
    /// The settings as environment variables, for a `ferry` child process.
    pub fn envs(&self) -> Vec<(String, String)> {
        self.settings.clone()
    }

    /// The script's command on this cluster (`kill DIR N`, `restart DIR N`).
    pub fn script(&self, args: &[&str]) {
        let st = std::process::Command::new("bash")
            .arg(repo_root().join("tests/garage.sh"))
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .status()
            .expect("run tests/garage.sh");
        assert!(st.success(), "tests/garage.sh {args:?} failed");
    }

    /// A raw client on the bucket, to look at what ferry wrote.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("ferry")
            .with_allow_http(true);
        for (k, v) in &self.settings {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                b = b.with_config(key, v);
            }
        }
        b.build().expect("s3 client")
    }

    /// Keys under `prefix` (relative to it).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let c = self.client();
        let p = object_store::path::Path::from(prefix.trim_end_matches('/'));
        let metas: Vec<object_store::ObjectMeta> = c.list(Some(&p)).try_collect().await.unwrap();
        metas
            .into_iter()
            .map(|m| {
                m.location
                    .as_ref()
                    .strip_prefix(prefix)
                    .unwrap_or(m.location.as_ref())
                    .to_owned()
            })
            .collect()
    }
}

static GARAGE: std::sync::OnceLock<Option<Garage>> = std::sync::OnceLock::new();

/// The test process's Garage cluster, started on first use. Missing `garage`: a failure under
/// `FERRY_REQUIRE_INTEROP=1`, else a visible skip (`None`).
pub fn garage() -> Option<&'static Garage> {
    GARAGE.get_or_init(Garage::start).as_ref()
}

static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Garage {
    /// A cluster of its own (for a test that kills nodes), stopped when dropped.
    pub fn private() -> Option<Garage> {
        Garage::start()
    }

    /// Node 1's S3 address.
    pub fn endpoint(&self) -> std::net::SocketAddr {
        let url = &self
            .settings
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .expect("endpoint")
            .1;
        url.trim_start_matches("http://")
            .parse()
            .expect("endpoint address")
    }

    /// The settings with `changes` applied (added or replaced).
    pub fn settings_with(&self, changes: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .settings
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        v.extend(changes.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    }

    fn start() -> Option<Garage> {
        let bin = tool("garage", &[])?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("garage");
        // Below the ephemeral range, spread by process (and cluster) so runs do not meet.
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // A cluster spans BASE+10..BASE+31.
        let base = 20_000 + ((std::process::id() % 100) * 3 + n % 3) * 40;
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("tests/garage.sh"))
            .arg("start")
            .arg(&dir)
            .arg(base.to_string())
            .env("GARAGE", &bin)
            .env("GARAGE_PARENT_PID", std::process::id().to_string())
            .output()
            .expect("run tests/garage.sh");
        assert!(
            out.status.success(),
            "starting Garage failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("garage env");
        let settings = env
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Garage {
            dir,
            settings,
            _tmp: tmp,
        })
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("tests/garage.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A store on `s3://ferry/<prefix>` of the test cluster.
pub async fn open_s3(g: &Garage, prefix: &str, read_only: bool) -> Store {
    let loc = ferry::location::Location::parse(&format!("s3://ferry/{prefix}")).unwrap();
    Store::open_at_with(&loc, read_only, &g.settings)
        .await
        .expect("open the S3 store")
}

/// A fresh key prefix in the test bucket: `s3://ferry/<prefix>`.
pub fn fresh_prefix() -> String {
    format!("t-{}/", uuid::Uuid::new_v4().simple())
}

/// Run each `async fn NAME(b: Backend)` as two tests: `on_dir::NAME` and `on_s3::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_dir {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::Dir).await
                }
            )*
        }
        mod on_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::S3).await
                }
            )*
        }
    };
}

/// What a [`FaultProxy`] does with the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the upstream.
    Pass = 0,
    /// Answer every request with a 500 and close.
    Fail500 = 1,
    /// Read, never answer.
    Stall = 2,
}

/// A TCP proxy in front of a store whose behaviour a test switches: a failing or stalled S3
/// endpoint on demand. Switching drops every open connection, so pooled clients meet the new
/// behaviour on their next request.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> FaultProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(ProxyMode::Pass as u8));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (m, c) = (mode.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mode = m.load(Ordering::SeqCst);
                let h = tokio::spawn(async move {
                    match mode {
                        0 => {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            }
                        }
                        1 => {
                            // Read the request head, answer 500, close.
                            let mut buf = vec![0u8; 65536];
                            let mut seen = Vec::new();
                            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                match client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = client
                                .write_all(
                                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                )
                                .await;
                        }
                        _ => {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n) = client.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        FaultProxy {
            addr,
            mode,
            conns,
            task,
        }
    }

    pub fn set(&self, m: ProxyMode) {
        self.mode
            .store(m as u8, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(ProxyMode::Stall);
    }
}

/// A flag a background loop polls to end; set when this is dropped, so a test that fails
/// (unwinds) early cannot leave the loop running for ever.
#[derive(Default)]
pub struct StopOnDrop(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every blob of `blobs` answers 404 under `repo` (swept, or never there).
pub async fn assert_blobs_gone(url: &str, repo: &str, blobs: &[Vec<u8>], why: &str) {
    for b in blobs {
        let st = http()
            .head(format!("{url}/v2/{repo}/blobs/{}", sha256(b)))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, reqwest::StatusCode::NOT_FOUND, "{why}");
    }
}
