//! Signed trips: a good trip verifies (with ferry, with the minisign crate, as an archive too);
//! a tag repointed in index.json, a blob swapped, an edited statement, another key and an
//! unsigned trip are each refused, named, with the destination untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_KEY_PASSWORD", "correct horse")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ferry {args:?}: {text}");
    text
}

/// Exit 1 with the reason; returns stderr.
fn refused(args: &[&str]) -> String {
    let out = ferry(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "ferry {args:?}: {err}");
    err
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .args(["-a", &s(from), &s(to)])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_trips_verify_and_every_tampering_is_refused_before_anything_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let keys = t.join("keys");
    let out = ok(&["key", "generate", "--out", &s(&keys)]);
    assert!(out.contains("key "), "{out}");
    // The secret key is encrypted: without the password it is refused.
    let sk_text = std::fs::read_to_string(keys.join("ferry.key")).unwrap();
    let sk_box = minisign::SecretKeyBox::from_string(&sk_text).unwrap();
    assert!(minisign::SecretKey::from_box(sk_box, Some("wrong".into())).is_err());
    let other = t.join("other");
    ok(&["key", "generate", "--no-password", "--out", &s(&other)]);
    // Never overwrites a key.
    let out = ferry(&["key", "generate", "--out", &s(&keys)]);
    assert!(!out.status.success());

    // Connected side: a registry with two images, carried to a signed directory.
    let srv = TestServer::start().await;
    push_image(&srv.url, "app", "1", 1).await;
    push_image(&srv.url, "app", "2", 2).await;
    let trip = t.join("trip");
    let key = s(&keys.join("ferry.key"));
    let pubkey = s(&keys.join("ferry.pub"));
    ok(&[
        "sync",
        "--sign",
        &key,
        &format!("docker://{}", srv.host()),
        &s(&trip),
    ]);
    let statement = std::fs::read(trip.join("ferry-trip.json")).unwrap();
    let sig = std::fs::read_to_string(trip.join("ferry-trip.json.minisig")).unwrap();
    // The minisign crate's own verifier accepts the statement.
    let pk = minisign::PublicKey::from_file(&pubkey).unwrap();
    let sig_box = minisign::SignatureBox::from_string(&sig).unwrap();
    minisign::verify(
        &pk,
        &sig_box,
        std::io::Cursor::new(&statement),
        true,
        false,
        false,
    )
    .unwrap();
    // And the minisign tool itself (what an auditor without ferry runs).
    if let Some(minisign) = tool("minisign", &["/usr/bin/minisign"]) {
        let out = Command::new(minisign)
            .args(["-V", "-m", &s(&trip.join("ferry-trip.json")), "-p", &pubkey])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "minisign -V: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let st: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(st["tags"].as_object().unwrap().len(), 2, "{st}");
    assert_eq!(st["blobs"].as_array().unwrap().len(), 6, "{st}");

    // A good trip verifies and is applied.
    let good = t.join("good");
    let out = ok(&["sync", "--verify-key", &pubkey, &s(&trip), &s(&good)]);
    assert!(out.contains("2 tag(s) published"), "{out}");
    let out = ok(&["check", "--verify-key", &pubkey, &s(&trip)]);
    assert!(out.contains("as stated"), "{out}");

    // Each tampering, on a copy of the trip; the destination must stay untouched.
    let idx_text = std::fs::read_to_string(trip.join("index.json")).unwrap();
    let idx: serde_json::Value = serde_json::from_str(&idx_text).unwrap();
    let digest_of = |tag: &str| -> String {
        idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (d1, d2) = (digest_of("app:1"), digest_of("app:2"));
    let layer_of = |dir: &Path, d: &str| -> PathBuf {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                dir.join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        dir.join("blobs/sha256").join(
            m["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        )
    };
    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper, String)> = vec![
        (
            "repointed",
            Box::new({
                let d2 = d2.clone();
                move |dir: &Path| {
                    let text = std::fs::read_to_string(dir.join("index.json")).unwrap();
                    // app:1's descriptor now names app:2's manifest.
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let mut v = v;
                    for d in v["manifests"].as_array_mut().unwrap() {
                        if d["annotations"]["org.opencontainers.image.ref.name"] == "app:1" {
                            d["digest"] = serde_json::Value::String(d2.clone());
                        }
                    }
                    std::fs::write(dir.join("index.json"), serde_json::to_vec(&v).unwrap())
                        .unwrap();
                }
            }),
            format!(
                "tag app:1 names {}, the statement says {d1}",
                digest_of("app:2")
            ),
        ),
        (
            "swapped",
            Box::new({
                let d1 = digest_of("app:1");
                move |dir: &Path| {
                    let l = layer_of(dir, &d1);
                    let mut b = std::fs::read(&l).unwrap();
                    b[0] ^= 0xff;
                    std::fs::write(&l, b).unwrap();
                }
            }),
            "holds other content".to_owned(),
        ),
        (
            "edited",
            Box::new(|dir: &Path| {
                let p = dir.join("ferry-trip.json");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replace("\"app:2\"", "\"app:3\"")).unwrap();
            }),
            "does not match its signature".to_owned(),
        ),
        (
            "unsigned",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("ferry-trip.json")).unwrap();
                std::fs::remove_file(dir.join("ferry-trip.json.minisig")).unwrap();
            }),
            "unsigned".to_owned(),
        ),
    ];
    for (name, tamper, reason) in &cases {
        let copy = t.join(format!("trip-{name}"));
        copy_dir(&trip, &copy);
        tamper(&copy);
        let dst = t.join(format!("dst-{name}"));
        let err = refused(&["sync", "--verify-key", &pubkey, &s(&copy), &s(&dst)]);
        assert!(
            err.contains("trip refused") && err.contains(reason.as_str()),
            "{name}: {err}"
        );
        assert!(!dst.exists(), "{name}: the destination was touched");
        let err = refused(&["check", "--verify-key", &pubkey, &s(&copy)]);
        assert!(err.contains(reason.as_str()), "{name}: {err}");
    }
    // Another key.
    let dst = t.join("dst-other-key");
    let err = refused(&[
        "sync",
        "--verify-key",
        &s(&other.join("ferry.pub")),
        &s(&trip),
        &s(&dst),
    ]);
    assert!(err.contains("not by the trusted key"), "{err}");
    assert!(!dst.exists());

    // A signed archive: verified, and an archive whose index is edited is refused.
    let ar = t.join("trip.tar");
    ok(&[
        "sync",
        "--sign",
        &key,
        &s(&trip),
        &format!("oci-archive:{}", s(&ar)),
    ]);
    let out = ok(&[
        "sync",
        "--verify-key",
        &pubkey,
        &format!("oci-archive:{}", s(&ar)),
        &s(&t.join("from-archive")),
    ]);
    assert!(out.contains("2 tag(s) published"), "{out}");
    let mut bytes = std::fs::read(&ar).unwrap();
    let at = bytes
        .windows(d1.len())
        .position(|w| w == d1.as_bytes())
        .unwrap();
    // The first mention of app:1's digest is in index.json (metadata comes before blobs).
    bytes[at..at + d2.len()].copy_from_slice(d2.as_bytes());
    let bad = t.join("bad.tar");
    std::fs::write(&bad, bytes).unwrap();
    let err = refused(&[
        "sync",
        "--verify-key",
        &pubkey,
        &format!("oci-archive:{}", s(&bad)),
        &s(&t.join("from-bad")),
    ]);
    assert!(err.contains("tag app:1 names"), "{err}");
    assert!(!t.join("from-bad").exists());

    // A served USB disk: the mirror refuses to start on a tampered trip.
    let err = refused(&[
        "serve",
        "--read-only",
        "--verify-key",
        &pubkey,
        "--listen",
        "127.0.0.1:0",
        "--data",
        &s(&t.join("trip-repointed")),
    ]);
    assert!(err.contains("tag app:1 names"), "{err}");
    srv.stop().await;
}

/// A rollback inside a signed trip: a second `app:1.4` entry, prepended to `index.json`, names
/// `app:1.3`'s manifest. The statement is untouched (minisign itself still verifies it), so a
/// reader that kept the last entry saw what was signed while the copy took the first. Refused,
/// named, in a directory and in an archive, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_named_twice_in_a_signed_trip_is_refused_not_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let keys = t.join("keys");
    ok(&["key", "generate", "--out", &s(&keys)]);
    let (key, pubkey) = (s(&keys.join("ferry.key")), s(&keys.join("ferry.pub")));
    let srv = TestServer::start().await;
    push_image(&srv.url, "app", "1.3", 13).await;
    push_image(&srv.url, "app", "1.4", 14).await;
    let trip = t.join("trip");
    ok(&[
        "sync",
        "--sign",
        &key,
        &format!("docker://{}", srv.host()),
        &s(&trip),
    ]);
    srv.stop().await;

    let evil = t.join("evil");
    copy_dir(&trip, &evil);
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evil.join("index.json")).unwrap()).unwrap();
    let entries = idx["manifests"].as_array_mut().unwrap();
    let old = entries
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "app:1.3")
        .unwrap()
        .clone();
    let mut dup = old.clone();
    dup["annotations"]["org.opencontainers.image.ref.name"] = "app:1.4".into();
    entries.insert(0, dup);
    std::fs::write(evil.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();

    // The signature over the statement is still good: only the layout lies.
    let minisign = tool("minisign", &["/usr/bin/minisign"]);
    if let Some(minisign) = &minisign {
        let out = Command::new(minisign)
            .args(["-V", "-m", &s(&evil.join("ferry-trip.json")), "-p", &pubkey])
            .output()
            .unwrap();
        assert!(out.status.success(), "minisign -V: {out:?}");
    }

    let old_digest = old["digest"].as_str().unwrap();
    let dst = t.join("dst-dir");
    let err = refused(&["sync", "--verify-key", &pubkey, &s(&evil), &s(&dst)]);
    assert!(err.contains("app:1.4 twice"), "{err}");
    assert!(err.contains(old_digest), "the entry is named: {err}");
    assert!(!dst.exists(), "the destination was touched");
    let err = refused(&["check", "--verify-key", &pubkey, &s(&evil)]);
    assert!(err.contains("app:1.4 twice"), "{err}");
    // Without a key too: a duplicate tag is an error everywhere, not only in signed trips.
    let err = refused(&["sync", &s(&evil), &s(&t.join("dst-unsigned"))]);
    assert!(err.contains("app:1.4 twice"), "{err}");
    // (Unsigned, the destination may be created, but nothing is published in it.)
    let published = std::fs::read(t.join("dst-unsigned/index.json")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&published).contains("app:"),
        "published: {published:?}"
    );

    // The same as one archive file, as the review built it.
    let tar = t.join("evil.tar");
    let st = Command::new("tar")
        .args(["-cf", &s(&tar), "-C", &s(&evil)])
        .args([
            "oci-layout",
            "index.json",
            "blobs",
            "ferry-trip.json",
            "ferry-trip.json.minisig",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let dst = t.join("dst-archive");
    let err = refused(&[
        "sync",
        "--verify-key",
        &pubkey,
        &format!("oci-archive:{}", s(&tar)),
        &s(&dst),
    ]);
    assert!(err.contains("app:1.4 twice"), "{err}");
    assert!(!dst.exists(), "the destination was touched");
    // The honest trip still goes through, with the tag the statement names.
    let good = t.join("good");
    let out = ok(&["sync", "--verify-key", &pubkey, &s(&trip), &s(&good)]);
    assert!(out.contains("2 tag(s) published"), "{out}");
}
