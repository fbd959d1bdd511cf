//! skopeo (containers/image) against ferry: copy an image and a multi-arch index into ferry and out
//! again with digests preserved, and read ferry's data directory as an `oci:` layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

async fn skopeo(bin: &Path, args: Vec<String>) -> String {
    let bin = bin.to_owned();
    let out = tokio::task::spawn_blocking(move || Command::new(&bin).args(&args).output())
        .await
        .unwrap()
        .expect("run skopeo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "skopeo failed: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn layout(name: &str) -> PathBuf {
    fixtures().join("layouts").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_in_and_out_and_reads_the_data_dir() {
    let Some(bin) = tool("skopeo", &["/usr/bin/skopeo"]) else {
        return;
    };
    let srv = TestServer::start().await;
    let host = srv.host();
    let out = tempfile::tempdir().unwrap();

    // A single image into ferry, from an OCI layout.
    let src = format!("oci:{}:app/image:1", layout("app-image").display());
    skopeo(
        &bin,
        s(&[
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{host}/sk/app:1"),
        ]),
    )
    .await;
    // A multi-arch index with an attestation manifest, digests preserved.
    let src = format!("oci:{}:app/buildx:1", layout("app-buildx").display());
    skopeo(
        &bin,
        s(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{host}/sk/multi:1"),
        ]),
    )
    .await;

    // What ferry serves is byte-identical to the source.
    let raw = skopeo(
        &bin,
        s(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/sk/multi:1"),
        ]),
    )
    .await;
    assert_eq!(
        sha256(raw.as_bytes()).to_string(),
        "sha256:422ea3734cd86fca753c5cdbe1be49894444bdd60f96c410a7223da18ed9f1cb"
    );

    // Out of ferry again, into a fresh layout, every manifest unchanged.
    let dst = out.path().join("out");
    skopeo(
        &bin,
        s(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{host}/sk/multi:1"),
            &format!("oci:{}:multi", dst.display()),
        ]),
    )
    .await;
    for d in [
        "422ea3734cd86fca753c5cdbe1be49894444bdd60f96c410a7223da18ed9f1cb",
        "9b1e1d811b925db36eb99df1883069692e59ea5c4aeaf001181bfb8ddea3f0fd",
        "743cdbc8e1c3ff59034911d2a419c949a710428f8f8ce9148235edfc422d65f8",
    ] {
        let a = std::fs::read(dst.join("blobs/sha256").join(d)).expect("manifest copied out");
        let b = std::fs::read(layout("app-buildx").join("blobs/sha256").join(d)).unwrap();
        assert_eq!(sha256(&a), sha256(&b));
    }

    // Registry to registry through ferry (HEAD + mount or upload on the same server).
    skopeo(
        &bin,
        s(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/sk/app:1"),
            &format!("docker://{host}/sk/copy:2"),
        ]),
    )
    .await;

    // ferry's data directory read as an OCI layout, while the server runs.
    let data = srv.dir.display().to_string();
    let raw = skopeo(
        &bin,
        s(&["inspect", "--raw", &format!("oci:{data}:sk/app:1")]),
    )
    .await;
    assert_eq!(
        sha256(raw.as_bytes()).to_string(),
        "sha256:9b1e1d811b925db36eb99df1883069692e59ea5c4aeaf001181bfb8ddea3f0fd"
    );
    let dir_out = out.path().join("dir");
    skopeo(
        &bin,
        s(&[
            "copy",
            &format!("oci:{data}:sk/multi:1"),
            &format!("dir:{}", dir_out.display()),
        ]),
    )
    .await;
    for layer in [
        "6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc",
        "d049b2c3676c3d02a3e22fc2f441193c48e03319c810486b9a31457e9dd8fd50",
        "93d9cfdc9e95d2bcde9b6e50afcdbfca9e9434d68609a87e5430736aedea6b89",
    ] {
        let b = std::fs::read(dir_out.join(layer)).expect("layer read from ferry's data dir");
        assert_eq!(sha256(&b).hex(), layer);
    }
    // A tag pushed by skopeo's registry-to-registry copy is in the layout too.
    skopeo(
        &bin,
        s(&["inspect", "--raw", &format!("oci:{data}:sk/copy:2")]),
    )
    .await;
    srv.stop().await;
}
