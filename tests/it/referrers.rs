//! Issue #28: signatures, SBOMs and attestations cross with their image — OCI 1.1 referrers
//! (`subject`) and cosign's tags (`sha256-<hex>.sig`) — through directories, archives and
//! registries, by one tag and by repository; a registry without the referrers API (CNCF
//! Distribution 2.8) gets the referrers tag schema, and ferry reads them back from it.

use ferry::digest::Digest;
use ferry::location::Location;
use ferry::sync::{ReferrerFilter, Summary, SyncOptions};
use serde_json::{json, Value};

use crate::common::*;
use crate::common::{sync_opts as opts, sync_run as run};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM_TYPE: &str = "application/spdx+json";
const INTOTO_TYPE: &str = "application/vnd.in-toto+json";

/// Push an OCI 1.1 artifact manifest (empty config, one blob) referring to `subject`; returns
/// its digest.
async fn push_referrer(
    url: &str,
    repo: &str,
    artifact_type: &str,
    layer_type: &str,
    payload: &[u8],
    subject: (&Digest, usize),
) -> Digest {
    let empty = b"{}";
    push_blob(url, repo, empty).await;
    push_blob(url, repo, payload).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty).to_string(), "size": 2},
        "layers": [{"mediaType": layer_type, "digest": sha256(payload).to_string(), "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0.to_string(), "size": subject.1},
        "annotations": {"org.opencontainers.image.created": "2026-12-06T00:00:00Z"},
    }))
    .unwrap();
    let d = sha256(&m);
    let r = put_manifest(url, repo, &d.to_string(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "push referrer {artifact_type}");
    d
}

/// What a source holds: an image, its three referrers made the OCI 1.1 way, a signature of the
/// SBOM, and a cosign `.sig` tag; another image with none.
struct Signed {
    image: Digest,
    sig: Digest,
    sbom: Digest,
    intoto: Digest,
    sbom_sig: Digest,
    cosign_tag: String,
    cosign: Digest,
}

async fn populate(url: &str) -> Signed {
    let m = push_image(url, "app/signed", "1", 281).await;
    push_image(url, "app/signed", "2", 282).await;
    let image = sha256(&m);
    let subject = (&image, m.len());
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"mirror/app/signed"}},"image":{{"docker-manifest-digest":"{image}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    let sig = push_referrer(
        url,
        "app/signed",
        SIG_TYPE,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        payload.as_bytes(),
        subject,
    )
    .await;
    let spdx =
        br#"{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"app","packages":[]}"#;
    let sbom = push_referrer(url, "app/signed", SBOM_TYPE, SBOM_TYPE, spdx, subject).await;
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v0.1","subject":[{{"name":"app","digest":{{"sha256":"{}"}}}}],"predicateType":"https://slsa.dev/provenance/v0.2","predicate":{{}}}}"#,
        image.hex()
    );
    let intoto = push_referrer(
        url,
        "app/signed",
        INTOTO_TYPE,
        INTOTO_TYPE,
        statement.as_bytes(),
        subject,
    )
    .await;
    let sbom_len = fetch_manifest(url, "app/signed", &sbom).await.len();
    let sbom_sig = push_referrer(
        url,
        "app/signed",
        SIG_TYPE,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        b"a signature of the SBOM",
        (&sbom, sbom_len),
    )
    .await;
    // Cosign's tag convention: a manifest under `sha256-<hex>.sig`, no subject.
    let cosign_tag = format!("sha256-{}.sig", image.hex());
    let cosign_m = push_image(url, "app/signed", &cosign_tag, 283).await;
    Signed {
        image,
        sig,
        sbom,
        intoto,
        sbom_sig,
        cosign_tag,
        cosign: sha256(&cosign_m),
    }
}

async fn fetch_manifest(url: &str, repo: &str, d: &Digest) -> Vec<u8> {
    let r = http()
        .get(format!("{url}/v2/{repo}/manifests/{d}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}@{d}");
    r.bytes().await.unwrap().to_vec()
}

/// The digests the referrers API lists for `subject`, sorted.
async fn referrers_api(url: &str, repo: &str, subject: &Digest) -> Vec<String> {
    let r = http()
        .get(format!("{url}/v2/{repo}/referrers/{subject}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "referrers of {subject}");
    list_of(&r.bytes().await.unwrap())
}

fn list_of(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap();
    let mut out: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn sorted(ds: &[&Digest]) -> Vec<String> {
    let mut v: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
    v.sort();
    v
}

/// A registry that holds the image holds everything that belongs to it, with the same digests.
async fn assert_registry_has_all(url: &str, s: &Signed, how: &str) {
    assert_eq!(
        referrers_api(url, "app/signed", &s.image).await,
        sorted(&[&s.sig, &s.sbom, &s.intoto]),
        "{how}: the image's referrers"
    );
    assert_eq!(
        referrers_api(url, "app/signed", &s.sbom).await,
        sorted(&[&s.sbom_sig]),
        "{how}: the SBOM's signature"
    );
    for d in [&s.sig, &s.sbom, &s.intoto, &s.sbom_sig] {
        let m = fetch_manifest(url, "app/signed", d).await;
        assert_eq!(&sha256(&m), d, "{how}: {d} byte for byte");
    }
    let r = http()
        .get(format!("{url}/v2/app/signed/manifests/{}", s.cosign_tag))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{how}: the cosign tag");
    assert_eq!(sha256(&r.bytes().await.unwrap()), s.cosign, "{how}");
}

fn assert_counted(sum: &Summary, how: &str) {
    assert_eq!(sum.referrers.len(), 5, "{how}: {:?}", sum.referrers);
    let text = sum.to_string();
    assert!(
        text.contains("5 referrers: 3 signatures, 1 SBOM, 1 attestation"),
        "{how}: {text}"
    );
    assert!(sum.failed.is_empty(), "{how}: {:?}", sum.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_cross_by_tag_and_by_repository_through_dirs_archives_and_registries() {
    let a = TestServer::start().await;
    let s = populate(&a.url).await;
    let tmp = tempfile::tempdir().unwrap();
    let src_one = format!("docker://{}/app/signed:1", a.host());

    // Before: the second image has no referrers; nothing is invented for it.
    // 1. One tag: registry -> directory -> registry.
    let dir = tmp.path().join("one");
    let sum = run(&src_one, &dir.display().to_string(), &opts()).await;
    assert_counted(&sum, "one tag -> dir");
    let b = TestServer::start().await;
    let sum = run(
        &dir.display().to_string(),
        &format!("docker://{}", b.host()),
        &opts(),
    )
    .await;
    assert_counted(&sum, "dir -> registry");
    assert_registry_has_all(&b.url, &s, "registry -> dir -> registry").await;
    // The tag the sync named is there; the other tag was not asked for.
    let r = http()
        .get(format!("{}/v2/app/signed/manifests/2", b.url))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "tag 2 was not asked for");

    // `ferry check` and the mirror's page show the tag's referrers.
    let reports = ferry::check::check(
        &Location::parse(&dir.display().to_string()).unwrap(),
        &["app/signed:1".into()],
        &[],
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(reports[0].ok(), "{}", reports[0]);
    let text = reports[0].to_string();
    for (kind, d) in [
        ("signature", &s.sig),
        ("sbom", &s.sbom),
        ("attestation", &s.intoto),
    ] {
        assert!(
            text.contains(&format!("REFERRER {kind} {d}")),
            "check lists the {kind}: {text}"
        );
    }
    let page = http()
        .get(format!("{}/ui/tag?repo=app/signed&tag=1", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("id=\"referrers\"").expect("a referrers table");
    let table = &page[at..page[at..].find("</table>").map_or(page.len(), |e| at + e)];
    assert!(table.contains("data-count=\"3\""), "{table}");
    for d in [&s.sig, &s.sbom, &s.intoto] {
        assert!(table.contains(&d.to_string()), "the page lists {d}");
    }

    // A signed trip covers them: the statement verifies, and an edited referrer is refused.
    let keys = tmp.path().join("keys");
    let ferry = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = ferry(&[
        "key",
        "generate",
        "--no-password",
        "--out",
        &keys.display().to_string(),
    ]);
    assert!(out.status.success());
    let signed = tmp.path().join("signed");
    let out = ferry(&[
        "sync",
        "--sign",
        &keys.join("ferry.key").display().to_string(),
        &src_one,
        &signed.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statement = std::fs::read_to_string(signed.join("ferry-trip.json")).unwrap();
    for d in [&s.sig, &s.sbom, &s.intoto, &s.sbom_sig, &s.cosign] {
        assert!(
            statement.contains(&d.to_string()),
            "the statement names {d}"
        );
    }
    let verify = |dir: &std::path::Path| {
        ferry(&[
            "check",
            "--verify-key",
            &keys.join("ferry.pub").display().to_string(),
            &dir.display().to_string(),
        ])
    };
    assert!(verify(&signed).status.success());
    let sbom_file = signed.join("blobs/sha256").join(s.sbom.hex());
    let mut perm = std::fs::metadata(&sbom_file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&sbom_file, perm).unwrap();
    let mut bytes = std::fs::read(&sbom_file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&sbom_file, bytes).unwrap();
    let out = verify(&signed);
    assert!(!out.status.success(), "an edited SBOM manifest passes");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&s.sbom.to_string()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. By repository: registry -> oci-archive -> registry.
    let ar = tmp.path().join("trip.tar");
    let sum = run(
        &format!("docker://{}/app/signed", a.host()),
        &format!("oci-archive:{}", ar.display()),
        &opts(),
    )
    .await;
    assert_counted(&sum, "repository -> archive");
    let c = TestServer::start().await;
    let sum = run(
        &format!("oci-archive:{}", ar.display()),
        &format!("docker://{}", c.host()),
        &opts(),
    )
    .await;
    assert_counted(&sum, "archive -> registry");
    assert_registry_has_all(&c.url, &s, "registry -> archive -> registry").await;

    // 3. Registry -> registry, one tag.
    let d = TestServer::start().await;
    let sum = run(&src_one, &format!("docker://{}", d.host()), &opts()).await;
    assert_counted(&sum, "registry -> registry");
    assert_registry_has_all(&d.url, &s, "registry -> registry").await;

    // 4. A second run carries nothing new.
    let again = run(&src_one, &format!("docker://{}", d.host()), &opts()).await;
    assert!(again.copied_nothing(), "{again}");

    // 5. --referrers none: the image alone; --referrers sbom: the SBOM alone.
    let none = tmp.path().join("none");
    let o = SyncOptions {
        referrers: ReferrerFilter::None,
        ..opts()
    };
    let sum = run(&src_one, &none.display().to_string(), &o).await;
    assert!(sum.referrers.is_empty(), "{sum}");
    let index = std::fs::read_to_string(none.join("index.json")).unwrap();
    for r in [&s.sig, &s.sbom, &s.intoto, &s.sbom_sig, &s.cosign] {
        assert!(
            !index.contains(&r.to_string()),
            "--referrers none carried {r}"
        );
    }
    // An unknown kind is a usage error naming the known form, before anything is read.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "sync",
            "--referrers",
            "signature,blessings",
            &src_one,
            "/nonexistent/x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"blessings\"")
            && err.contains("signature, sbom, provenance, attestation, other"),
        "{err}"
    );
    let only = tmp.path().join("sbom");
    let o = SyncOptions {
        referrers: "sbom".parse().unwrap(),
        ..opts()
    };
    let sum = run(&src_one, &only.display().to_string(), &o).await;
    let got: Vec<&str> = sum.referrers.iter().map(|r| r.kind).collect();
    assert_eq!(got, vec!["sbom"], "{sum}");
    let index = std::fs::read_to_string(only.join("index.json")).unwrap();
    assert!(index.contains(&s.sbom.to_string()));
    assert!(!index.contains(&s.sig.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_the_referrers_api_gets_the_tag_schema_and_is_read_back() {
    let Some(dist) = tokio::task::spawn_blocking(Distribution::start)
        .await
        .unwrap()
    else {
        return;
    };
    let a = TestServer::start().await;
    let s = populate(&a.url).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trip");
    run(
        &format!("docker://{}/app/signed:1", a.host()),
        &dir.display().to_string(),
        &opts(),
    )
    .await;
    // Distribution 2.8 has no referrers API.
    let r = http()
        .get(format!("{}/v2/app/signed/referrers/{}", dist.url, s.image))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "Distribution 2.8 answers the referrers API"
    );
    let sum = run(
        &dir.display().to_string(),
        &format!("docker://{}", dist.host),
        &opts(),
    )
    .await;
    assert_counted(&sum, "dir -> Distribution");
    // The referrers tag schema: `sha256-<hex>` names an index listing them.
    for (subject, want) in [
        (&s.image, sorted(&[&s.sig, &s.sbom, &s.intoto])),
        (&s.sbom, sorted(&[&s.sbom_sig])),
    ] {
        let r = http()
            .get(format!(
                "{}/v2/app/signed/manifests/sha256-{}",
                dist.url,
                subject.hex()
            ))
            .header("Accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the tag schema index of {subject}");
        let body = r.bytes().await.unwrap();
        assert_eq!(list_of(&body), want, "the tag schema index of {subject}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        for d in v["manifests"].as_array().unwrap() {
            assert!(d["artifactType"].is_string(), "{d}");
        }
    }
    // A second run adds nothing twice.
    run(
        &dir.display().to_string(),
        &format!("docker://{}", dist.host),
        &opts(),
    )
    .await;
    let r = http()
        .get(format!(
            "{}/v2/app/signed/manifests/sha256-{}",
            dist.url,
            s.image.hex()
        ))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(list_of(&r.bytes().await.unwrap()).len(), 3);
    // Read back from Distribution by one tag: ferry finds them through the tag schema.
    let back = TestServer::start().await;
    let sum = run(
        &format!("docker://{}/app/signed:1", dist.host),
        &format!("docker://{}", back.host()),
        &opts(),
    )
    .await;
    assert_counted(&sum, "Distribution -> registry");
    assert_registry_has_all(&back.url, &s, "Distribution -> ferry").await;
}

/// A pull-through mirror fetches an image's referrers with its manifest, so its referrers API
/// lists them and a trip from it carries them (`ferry used` → `ferry sync --refs-file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_through_mirror_fetches_referrers_with_the_image() {
    let up = TestServer::start().await;
    let s = populate(&up.url).await;
    let tmp = tempfile::tempdir().unwrap();
    let pull = ferry::proxy::PullThrough::new(
        vec![ferry::proxy::Upstream::parse(&format!("docker.io={}", up.url), None, None).unwrap()],
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let mirror = TestServer::start_opts(
        &tmp.path().join("mirror"),
        ServerOpts {
            pull: Some(pull),
            ..Default::default()
        },
    )
    .await;
    // A client pulls the image's manifest through the mirror, nothing else.
    let r = http()
        .get(format!(
            "{}/v2/docker.io/app/signed/manifests/1",
            mirror.url
        ))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        referrers_api(&mirror.url, "docker.io/app/signed", &s.image).await,
        sorted(&[&s.sig, &s.sbom, &s.intoto]),
        "the mirror lists the image's referrers after one pull"
    );
    assert_eq!(
        referrers_api(&mirror.url, "docker.io/app/signed", &s.sbom).await,
        sorted(&[&s.sbom_sig]),
        "and the SBOM's signature"
    );
    // The trip from the connected mirror carries them (their blobs come through it).
    let dir = tmp.path().join("trip");
    let sum = run(
        &format!("docker://{}/docker.io/app/signed:1", mirror.host()),
        &dir.display().to_string(),
        &SyncOptions {
            referrers: "signature,sbom,attestation".parse().unwrap(),
            ..opts()
        },
    )
    .await;
    assert!(sum.failed.is_empty(), "{sum}");
    let carried: Vec<String> = sum.referrers.iter().map(|r| r.referrer.clone()).collect();
    for d in [&s.sig, &s.sbom, &s.intoto, &s.sbom_sig] {
        assert!(
            carried.iter().any(|c| c.ends_with(&d.to_string())),
            "{d}: {carried:?}"
        );
        assert!(dir.join("blobs/sha256").join(d.hex()).exists(), "{d}");
    }
    mirror.stop().await;
}
