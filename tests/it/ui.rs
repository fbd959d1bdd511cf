//! The web page (`/`, `/ui/…`): its numbers against what the registry API says (walked here
//! independently of the page's own code), the kinds of the three BuildKit cache shapes, an index
//! with attestations and a signature, credentials, and the three pages in a real Chromium driven
//! through chromedriver: no console error, sorting, filtering, paging over a 10,000-tag
//! repository, and screenshots (written to `target/ui-screenshots/`, the ones in docs/ come
//! from there).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const BIG_REPO: &str = "big/many";
const BIG_TAGS: usize = 10_000;

/// A repository of `n` tags written straight into a layout (pushing 10,000 manifests through
/// the API would take minutes): every tag its own config and layer over one shared base layer.
fn write_big_repo(dir: &Path, repo: &str, n: usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| {
        let d = sha256(b);
        std::fs::write(blobs.join(d.hex()), b).unwrap();
        json!({"mediaType": "", "digest": d.to_string(), "size": b.len()})
    };
    let base = bytes(2048, 7);
    let mut base_d = put(&base);
    base_d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let mut cfg = put(format!(r#"{{"architecture":"amd64","os":"linux","i":{i}}}"#).as_bytes());
        cfg["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let mut layer = put(format!("layer of tag {i}").as_bytes());
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": [base_d, layer]}))
        .unwrap();
        let mut md = put(&m);
        md["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        md["annotations"] = json!({
            "io.ferry.repository": repo,
            "org.opencontainers.image.ref.name": format!("{repo}:v{i:05}"),
            "io.ferry.tagged": (1_700_000_000_000u64 + i as u64).to_string(),
        });
        entries.push(md);
    }
    let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// A cosign-style signature of `subject` (a manifest with `subject`), tagged as cosign tags it.
async fn push_signature(url: &str, repo: &str, subject: &[u8], subject_mt: &str) {
    let cfg = b"{}";
    let sig = b"not really a signature";
    push_blob(url, repo, cfg).await;
    push_blob(url, repo, sig).await;
    let sd = sha256(subject);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(cfg).to_string(), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": sha256(sig).to_string(), "size": sig.len()}],
        "subject": {"mediaType": subject_mt, "digest": sd.to_string(), "size": subject.len()},
    }))
    .unwrap();
    let tag = format!("sha256-{}.sig", sd.hex());
    let r = put_manifest(
        url,
        repo,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// The store every test here looks at: the five BuildKit captures (three cache shapes, an image,
/// an index with attestations), two repositories sharing an image, a signature, and — when
/// `big` (a directory only) — a 10,000-tag repository.
async fn populated(big: bool) -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    if big {
        write_big_repo(&dir, BIG_REPO, BIG_TAGS);
    }
    let s = TestServer::start_on(&dir, false).await;
    fill(&s).await;
    (s, tmp)
}

/// The same on either backend (without the big repository); `None` when Garage is missing.
async fn populated_in(b: Backend) -> Option<TestServer> {
    let s = TestServer::start_in(b).await?;
    fill(&s).await;
    Some(s)
}

async fn fill(s: &TestServer) {
    for name in [
        "app-buildx",
        "app-image",
        "cache-legacy-docker",
        "cache-legacy-oci",
        "cache-manifest",
    ] {
        crate::fixtures::replay_push(&s.url, name).await;
    }
    push_image(&s.url, "shared/a", "1", 1).await;
    push_image(&s.url, "shared/b", "1", 1).await;
    let b2 = push_image(&s.url, "shared/b", "2", 2).await;
    push_signature(
        &s.url,
        "shared/b",
        &b2,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
}

async fn get_page(url: &str) -> String {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    assert!(r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/html")));
    r.text().await.unwrap()
}

/// The `data-*` attributes of every element whose opening tag has `marker` (e.g. `data-repo=`).
fn rows(html: &str, marker: &str) -> Vec<HashMap<String, String>> {
    let attr = regex::Regex::new(r#"(data-[a-z]+)="([^"]*)""#).unwrap();
    let mut out = Vec::new();
    for (i, _) in html.match_indices(marker) {
        let start = html[..i].rfind('<').unwrap();
        let end = i + html[i..].find('>').unwrap();
        let tag = &html[start..end];
        out.push(
            attr.captures_iter(tag)
                .map(|c| (c[1].to_owned(), c[2].replace("&amp;", "&")))
                .collect(),
        );
    }
    out
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every blob (manifests included) a tag reaches, with its size, walked through the API.
async fn walk(url: &str, repo: &str, reference: &str, out: &mut BTreeMap<String, u64>) {
    let r = http()
        .get(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{reference}");
    let d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = r.bytes().await.unwrap();
    out.insert(d, body.len() as u64);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let desc = |c: &Value| {
        (
            c["digest"].as_str().unwrap().to_owned(),
            c["size"].as_u64().unwrap(),
            c["mediaType"].as_str().unwrap_or("").to_owned(),
        )
    };
    if let Some(list) = v["manifests"].as_array() {
        for c in list {
            let (d, s, mt) = desc(c);
            if ferry::media::is_manifest_type(&mt) {
                Box::pin(walk(url, repo, &d, out)).await;
            } else {
                out.insert(d, s);
            }
        }
    } else {
        let mut children: Vec<&Value> = vec![&v["config"]];
        for k in ["layers", "blobs"] {
            children.extend(v[k].as_array().into_iter().flatten());
        }
        for c in children.into_iter().filter(|c| c.is_object()) {
            let (d, s, _) = desc(c);
            out.insert(d, s);
        }
    }
}

async fn tags_of(url: &str, repo: &str) -> Vec<String> {
    let v: Value = http()
        .get(format!("{url}/v2/{repo}/tags/list?n=100000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

async fn the_numbers_on_the_page_are_the_registrys(b: Backend) {
    let Some(s) = populated_in(b).await else {
        return;
    };
    // A pull of app/image:1 is its last read.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let r = http()
        .get(format!("{}/v2/app/image/manifests/1", s.url))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The page reuses its catalog while index.json is unchanged; a tag published after the pull
    // makes the next page a fresh one whatever the start-up warm-up did meanwhile (no race).
    push_image(&s.url, "shared/a", "again", 1).await;
    let html = get_page(&format!("{}/", s.url)).await;
    let shown = rows(&html, "data-repo=");
    for row in &shown {
        if row["data-repo"] == "app/image" {
            let read: u64 = row["data-read"].parse().expect("app/image has a last read");
            // Marker times have the filesystem's (or the store's) granularity: a second.
            assert!(
                read + 1000 >= before,
                "last read {read} before the pull at {before}"
            );
        } else {
            assert_eq!(row["data-read"], "", "{} was never read", row["data-repo"]);
        }
    }
    let catalog: Value = http()
        .get(format!("{}/v2/_catalog", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let repos: Vec<String> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        shown
            .iter()
            .map(|r| r["data-repo"].clone())
            .collect::<BTreeSet<_>>(),
        repos.iter().cloned().collect::<BTreeSet<_>>(),
        "the page lists the catalog's repositories"
    );
    // Per repository: tags, every blob once, and what no other repository shares.
    let mut sets: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut tag_count = 0;
    for repo in &repos {
        let tags = tags_of(&s.url, repo).await;
        tag_count += tags.len();
        let set = sets.entry(repo.clone()).or_default();
        for t in &tags {
            walk(&s.url, repo, t, set).await;
        }
    }
    for row in &shown {
        let repo = &row["data-repo"];
        let set = &sets[repo];
        let bytes: u64 = set.values().sum();
        let unique: u64 = set
            .iter()
            .filter(|(d, _)| sets.iter().all(|(r, o)| r == repo || !o.contains_key(*d)))
            .map(|(_, s)| s)
            .sum();
        assert_eq!(
            row["data-tags"],
            tags_of(&s.url, repo).await.len().to_string(),
            "{repo} tags"
        );
        assert_eq!(row["data-bytes"], bytes.to_string(), "{repo} bytes");
        assert_eq!(
            row["data-unique"],
            unique.to_string(),
            "{repo} only-here bytes"
        );
    }
    // shared/a is all shared with shared/b; shared/b holds something of its own.
    let by: HashMap<&str, &HashMap<String, String>> =
        shown.iter().map(|r| (r["data-repo"].as_str(), r)).collect();
    assert_eq!(by["shared/a"]["data-unique"], "0");
    assert_ne!(by["shared/b"]["data-unique"], "0");
    let totals = rows(&html, "data-count=");
    assert_eq!(
        totals[0]["data-count"],
        repos.len().to_string(),
        "repositories card"
    );
    assert_eq!(totals[1]["data-count"], tag_count.to_string(), "tags card");
    // Stored blobs: what the store holds (every blob here is referenced).
    let all: BTreeSet<&String> = sets.values().flat_map(|m| m.keys()).collect();
    assert_eq!(
        totals[2]["data-count"],
        all.len().to_string(),
        "stored blobs card"
    );
    s.stop().await;
}

async fn each_tag_is_named_by_its_kind_and_its_graph_is_the_manifests(b: Backend) {
    let Some(s) = populated_in(b).await else {
        return;
    };
    let sig_tag = {
        let tags = tags_of(&s.url, "shared/b").await;
        tags.into_iter().find(|t| t.ends_with(".sig")).unwrap()
    };
    for (repo, tag, kind) in [
        ("cache/legacy-oci", "cache", "BuildKit cache (OCI index)"),
        (
            "cache/legacy-docker",
            "cache",
            "BuildKit cache (Docker types)",
        ),
        ("cache/manifest", "cache", "BuildKit cache (image-manifest)"),
        ("app/buildx", "1", "image index + attestations"),
        ("app/image", "1", "image"),
        ("shared/b", "2", "image"),
        ("shared/b", sig_tag.as_str(), "signature"),
    ] {
        let html = get_page(&format!(
            "{}/ui/tag?repo={}&tag={}",
            s.url,
            enc(repo),
            enc(tag)
        ))
        .await;
        let kinds = rows(&html, "data-kind=");
        assert_eq!(kinds[0]["data-kind"], kind, "{repo}:{tag}");
        // Platforms: from the index's descriptors, or read from the image config.
        let i = html.find("id=\"tag-platforms\"").unwrap();
        let card = &html[i..i + html[i..].find("</div></div>").unwrap()];
        if repo.starts_with("app/") {
            assert!(
                card.contains("linux/amd64"),
                "{repo}:{tag} platforms: {card}"
            );
        }
        // The graph holds exactly what the API walk reaches, each with its size.
        let mut want = BTreeMap::new();
        walk(&s.url, repo, tag, &mut want).await;
        let nodes: BTreeMap<String, String> = rows(&html, "data-digest=")
            .into_iter()
            .filter(|n| n.contains_key("data-size"))
            .map(|n| (n["data-digest"].clone(), n["data-size"].clone()))
            .collect();
        let want: BTreeMap<String, String> =
            want.into_iter().map(|(d, s)| (d, s.to_string())).collect();
        assert_eq!(nodes, want, "{repo}:{tag} graph");
        // The repository page names the same kind for the tag.
        let repo_html = get_page(&format!("{}/ui/repo?name={}", s.url, enc(repo))).await;
        let row = rows(&repo_html, "data-tag=")
            .into_iter()
            .find(|r| r["data-tag"] == tag)
            .unwrap();
        assert!(
            repo_html.contains(&format!("data-kind=\"{kind}\"")),
            "{repo} page kind"
        );
        assert_eq!(
            row["data-bytes"],
            nodes
                .values()
                .map(|s| s.parse::<u64>().unwrap())
                .sum::<u64>()
                .to_string()
        );
    }
    // What deleting a tag frees: shared/a:1 shares all with shared/b:1; shared/b:2 is its own
    // (its signature refers to it but is another tag, so its blobs are not counted).
    let frees = |html: &str| {
        let i = html.find("id=\"tag-frees\"").unwrap();
        rows(&html[i..], "data-bytes=")[0]["data-bytes"].clone()
    };
    let a1 = get_page(&format!("{}/ui/tag?repo=shared/a&tag=1", s.url)).await;
    assert_eq!(frees(&a1), "0");
    let mut b2 = BTreeMap::new();
    walk(&s.url, "shared/b", "2", &mut b2).await;
    let page = get_page(&format!("{}/ui/tag?repo=shared/b&tag=2", s.url)).await;
    assert_eq!(frees(&page), b2.values().sum::<u64>().to_string());
    // The lines to copy name this host; a cache gets --cache-from, an image docker pull.
    let cache = get_page(&format!("{}/ui/tag?repo=cache/manifest&tag=cache", s.url)).await;
    assert!(cache.contains(&format!(
        "--cache-from type=registry,ref={}/cache/manifest:cache",
        s.host()
    )));
    assert!(page.contains(&format!("docker pull {}/shared/b:2", s.host())));
    assert!(page.contains(&format!(
        "ferry sync docker://{}/shared/b:2 /media/usb/ferry",
        s.host()
    )));
    // Unknown pages, repositories and tags are 404, not 500.
    for p in [
        "/ui/nope",
        "/ui/repo?name=no/such",
        "/ui/tag?repo=shared/b&tag=none",
    ] {
        let r = http().get(format!("{}{p}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_ten_thousand_tag_repository_is_paged_sorted_and_filtered() {
    let (s, _tmp) = populated(true).await;
    let html = get_page(&format!("{}/", s.url)).await;
    let big = rows(&html, "data-repo=")
        .into_iter()
        .find(|r| r["data-repo"] == BIG_REPO)
        .unwrap();
    assert_eq!(big["data-tags"], BIG_TAGS.to_string());
    let base = format!("{}/ui/repo?name={}", s.url, enc(BIG_REPO));
    let first = get_page(&base).await;
    let info = &rows(&first, "data-pages=")[0];
    assert_eq!(info["data-total"], BIG_TAGS.to_string());
    assert_eq!(info["data-pages"], (BIG_TAGS / 100).to_string());
    let tags: Vec<String> = rows(&first, "data-tag=")
        .into_iter()
        .map(|r| r["data-tag"].clone())
        .collect();
    assert_eq!(tags.len(), 100);
    assert_eq!(tags[0], "v00000");
    // Page 37 of the newest first: pushed times are 1..10000 ms apart, so exact.
    let p = get_page(&format!("{base}&sort=pushed&dir=desc&page=37")).await;
    let tags: Vec<String> = rows(&p, "data-tag=")
        .into_iter()
        .map(|r| r["data-tag"].clone())
        .collect();
    assert_eq!(
        tags.first().unwrap(),
        &format!("v{:05}", BIG_TAGS - 1 - 36 * 100)
    );
    assert_eq!(tags.len(), 100);
    // A filter narrows the rows and the pages.
    let f = get_page(&format!("{base}&q=v0012")).await;
    assert_eq!(rows(&f, "data-pages=")[0]["data-total"], "10");
    s.stop().await;
}

#[tokio::test]
async fn a_carried_directory_served_read_only_shows_what_the_trip_brought() {
    let (s, tmp) = populated(false).await;
    let before = rows(&get_page(&format!("{}/", s.url)).await, "data-repo=");
    s.stop().await;
    let usb = TestServer::start_on(&tmp.path().join("data"), true).await;
    let html = get_page(&format!("{}/", usb.url)).await;
    assert!(
        html.contains(">read-only<"),
        "the page says it is read-only"
    );
    let after = rows(&html, "data-repo=");
    let key = |r: &Vec<HashMap<String, String>>| {
        r.iter()
            .map(|r| {
                (
                    r["data-repo"].clone(),
                    r["data-tags"].clone(),
                    r["data-bytes"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&after), key(&before));
    let tag = get_page(&format!(
        "{}/ui/tag?repo=cache/legacy-oci&tag=cache",
        usb.url
    ))
    .await;
    assert!(tag.contains("data-kind=\"BuildKit cache (OCI index)\""));
    usb.stop().await;
}

/// An htpasswd file with alice:secret.
fn alice_htpasswd() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("htpasswd");
    let line = format!("alice:{}\n", bcrypt::hash("secret", 6).unwrap());
    std::fs::write(&file, line).unwrap();
    (tmp, file)
}

#[tokio::test]
async fn the_page_asks_for_the_same_credentials_as_reads() {
    let (tmp, file) = alice_htpasswd();
    for anonymous_read in [false, true] {
        let auth = ferry::server::auth::Htpasswd::new(file.clone(), anonymous_read).unwrap();
        let s = TestServer::start_with(&tmp.path().join("data"), false, Some(auth)).await;
        for p in ["/", "/ui/repo?name=x", "/ui/tag?repo=x&tag=y"] {
            let r = http().get(format!("{}{p}", s.url)).send().await.unwrap();
            if anonymous_read {
                assert_ne!(
                    r.status(),
                    StatusCode::UNAUTHORIZED,
                    "{p} with anonymous reads"
                );
            } else {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{p}");
                assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"ferry\"");
            }
            let wrong = http()
                .get(format!("{}{p}", s.url))
                .basic_auth("alice", Some("wrong"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                wrong.status(),
                StatusCode::UNAUTHORIZED,
                "{p} wrong password"
            );
        }
        let r = http()
            .get(format!("{}/", s.url))
            .basic_auth("alice", Some("secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        s.stop().await;
    }
}

/// chromedriver's log endpoint (not in W3C WebDriver, so not in fantoccini): the browser's
/// console since the last call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

struct Browser {
    driver: std::process::Child,
    client: fantoccini::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let driver_bin = tool("chromedriver", &["/usr/bin/chromedriver"])?;
        let chromium = tool("chromium", &["/usr/bin/chromium"])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let webdriver = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen: retry the session for up to 20 s.
        let mut last = None;
        for _ in 0..200 {
            match fantoccini::ClientBuilder::rustls()
                .unwrap()
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => {
                    return Some(Browser {
                        driver,
                        client,
                        _profile: profile,
                    })
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session from chromedriver: {last:?}");
    }

    /// Console entries at level SEVERE (errors) since the last call.
    async fn console_errors(&self) -> Vec<String> {
        let v = self.client.issue_cmd(BrowserLog).await.unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self
            .client
            .find_all(fantoccini::Locator::Css(css))
            .await
            .unwrap()
        {
            out.push(e.attr(attr).await.unwrap().unwrap_or_default());
        }
        out
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = repo_root().join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Click a link or button and wait until the page it leads to, whose address contains
    /// `to`, has loaded (no reading of the old page, or of one half-loaded, whatever the timing).
    async fn click(&self, css: &str, to: &str) {
        let before = self.client.current_url().await.unwrap();
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
        for _ in 0..600 {
            let now = self.client.current_url().await.unwrap();
            let ready = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .unwrap();
            if now != before && now.as_str().contains(to) && ready == "complete" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("clicking {css} did not lead to a page at {to} within 30 s");
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn the_three_pages_in_a_real_browser() {
    let (s, _tmp) = populated(true).await;
    let Some(b) = Browser::start().await else {
        return;
    };
    let c = &b.client;
    // The mirror.
    c.goto(&format!("{}/", s.url)).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "The mirror · ferry");
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "mirror page console"
    );
    let repos = b.attrs("tr[data-repo]", "data-repo").await;
    assert_eq!(repos.len(), 8);
    b.screenshot("mirror.png").await;
    // Sorting by size: largest first, then (clicked again) smallest first.
    b.click("a[data-sort=size]", "sort=size&dir=desc").await;
    let sizes: Vec<u64> = b
        .attrs("tr[data-repo]", "data-bytes")
        .await
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "descending: {sizes:?}"
    );
    b.click("a[data-sort=size]", "sort=size").await;
    let sizes: Vec<u64> = b
        .attrs("tr[data-repo]", "data-bytes")
        .await
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] <= w[1]),
        "ascending: {sizes:?}"
    );
    // Filtering: the form, typed into and submitted.
    let input = c
        .find(fantoccini::Locator::Css("input[name=q]"))
        .await
        .unwrap();
    input.send_keys("cache").await.unwrap();
    b.click("form.filter button", "q=cache").await;
    let shown = b.attrs("tr[data-repo]", "data-repo").await;
    assert_eq!(
        shown.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["cache/legacy-docker", "cache/legacy-oci", "cache/manifest"]),
        "filtered"
    );
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "after sorting and filtering"
    );
    // A repository, reached by its link; the 10,000-tag one pages.
    c.goto(&format!("{}/", s.url)).await.unwrap();
    b.click(
        &format!("a[href='/ui/repo?name={}']", enc(BIG_REPO)),
        "/ui/repo?name=big%2Fmany",
    )
    .await;
    assert_eq!(
        b.attrs("#pageinfo", "data-total").await,
        vec![BIG_TAGS.to_string()]
    );
    assert_eq!(b.attrs("tr[data-tag]", "data-tag").await.len(), 100);
    b.click("a[rel=next]", "page=2").await;
    assert_eq!(
        b.attrs("#pageinfo", "data-page").await,
        vec!["2".to_string()]
    );
    assert_eq!(b.attrs("tr[data-tag]", "data-tag").await[0], "v00100");
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "big repository page"
    );
    c.goto(&format!("{}/ui/repo?name=app%2Fbuildx", s.url))
        .await
        .unwrap();
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "repository page"
    );
    b.click("tr[data-tag='1'] a", "/ui/tag?repo=app%2Fbuildx&tag=1")
        .await;
    // A tag: its graph.
    let nodes = b.attrs("#graph li.node", "data-digest").await;
    let mut want = BTreeMap::new();
    walk(&s.url, "app/buildx", "1", &mut want).await;
    assert_eq!(
        nodes.iter().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "tag page console"
    );
    b.screenshot("tag.png").await;
    c.goto(&format!("{}/ui/repo?name=cache%2Flegacy-oci", s.url))
        .await
        .unwrap();
    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "cache repository page"
    );
    b.screenshot("repo.png").await;
    // The console check can fail: a page answered 404 is an error in the console.
    c.goto(&format!("{}/ui/no-such-page", s.url)).await.unwrap();
    let errors = b.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("404")),
        "a 404 shows in the console: {errors:?}"
    );
    b.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn the_browser_gets_in_with_credentials() {
    let (tmp, file) = alice_htpasswd();
    let auth = ferry::server::auth::Htpasswd::new(file, false).unwrap();
    let s = TestServer::start_with(&tmp.path().join("data"), false, Some(auth)).await;
    let Some(b) = Browser::start().await else {
        return;
    };
    b.client
        .goto(&format!("http://alice:secret@{}/", s.host()))
        .await
        .unwrap();
    assert_eq!(b.client.title().await.unwrap(), "The mirror · ferry");
    b.stop().await;
    s.stop().await;
}

on_both_backends!(
    the_numbers_on_the_page_are_the_registrys,
    each_tag_is_named_by_its_kind_and_its_graph_is_the_manifests,
);
