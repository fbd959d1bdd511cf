//! TLS for a mirror shared over a LAN: the certificate the server presents (reloadable without a
//! restart) and `ferry tls init`, a small private CA for sites with no PKI of their own.
//!
//! `init` keeps no CA key: it signs the one server certificate and throws the CA key away, so a
//! copy of `ca.crt` on every client can only ever vouch for this mirror. Changing the host names
//! means running `init` again (with `--force`) and handing out the new `ca.crt`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::{Error, Result};

fn tls_err(msg: impl Into<String>) -> Error {
    Error::Tls(msg.into())
}

/// The certificate and key a server presents, re-read from their files on [`ServerTls::reload`]
/// (the binary calls it on SIGHUP). Each new connection takes the configuration current at its
/// handshake; connections already open keep theirs.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        })
    }

    /// Re-read both files. On any error the old certificate stays in use (a half-copied renewal
    /// must not take the mirror down) and the error is returned for the log.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| tls_err(format!("reading certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("no PEM certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(format!("reading private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            tls_err(format!(
                "{} and {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `ferry tls init` wrote.
#[derive(Debug)]
pub struct Issued {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub hosts: Vec<String>,
    pub not_after: String,
}

/// A host name or IP address a certificate can name.
fn check_host(h: &str) -> Result<()> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() <= 253 && h.split('.').all(ok_label) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--host {h:?} is neither an IP address nor a DNS name (no port: the certificate names hosts)"
        )))
    }
}

/// Create a CA and a server certificate for `hosts`, valid for `days`, as `ca.crt`, `server.crt`
/// and `server.key` (mode 0600) in `out`. Existing files are kept unless `force`.
pub fn init(hosts: &[String], out: &Path, days: u32, force: bool) -> Result<Issued> {
    if hosts.is_empty() {
        return Err(Error::Usage(
            "name at least one --host (the name or IP clients use to reach the mirror)".into(),
        ));
    }
    for h in hosts {
        check_host(h)?;
    }
    std::fs::create_dir_all(out)?;
    let dir = std::fs::canonicalize(out)?;
    let ca_cert = dir.join("ca.crt");
    let server_cert = dir.join("server.crt");
    let server_key = dir.join("server.key");
    if !force {
        for p in [&ca_cert, &server_cert, &server_key] {
            if p.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; pass --force to replace it (clients must then trust the new ca.crt)",
                    p.display()
                )));
            }
        }
    }
    let rc = |e: rcgen::Error| tls_err(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind (offline machines often are).
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(days.max(1)));

    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("ferry mirror CA ({})", hosts[0]),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "ferry");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_pem = ca.self_signed(&ca_key).map_err(rc)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(rc)?;
    let mut leaf = CertificateParams::new(hosts.to_vec()).map_err(rc)?;
    leaf.distinguished_name
        .push(DnType::CommonName, hosts[0].clone());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_pem = leaf.signed_by(&key, &issuer).map_err(rc)?.pem();

    write_file(&server_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&server_cert, leaf_pem.as_bytes(), 0o644)?;
    write_file(&ca_cert, ca_pem.as_bytes(), 0o644)?;
    Ok(Issued {
        dir,
        ca_cert,
        server_cert,
        server_key,
        hosts: hosts.to_vec(),
        not_after: format!(
            "{:04}-{:02}-{:02}",
            not_after.year(),
            u8::from(not_after.month()),
            not_after.day()
        ),
    })
}

/// Write through a temporary file with the final mode from the start (a key is never readable by
/// others, not even for a moment), then rename into place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The text `ferry tls init` prints: how to serve with the new files and where each client looks
/// for the CA. `port` is the port clients will use.
pub fn instructions(issued: &Issued, port: u16) -> String {
    let ca = issued.ca_cert.display();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Wrote {ca}\n      {}\n      {} (mode 0600)\nfor {}, valid until {}.\n",
        issued.server_cert.display(),
        issued.server_key.display(),
        issued.hosts.join(", "),
        issued.not_after
    );
    let _ = writeln!(s, "Serve with:");
    let _ = writeln!(
        s,
        "  ferry serve --listen 0.0.0.0:{port} --tls-cert {} --tls-key {} --htpasswd FILE\n",
        issued.server_cert.display(),
        issued.server_key.display()
    );
    let _ = writeln!(
        s,
        "Trust the CA on every client (copy {ca} to the client first; the commands use this path):\n"
    );
    let _ = writeln!(
        s,
        "  Docker (pull and push see it at once; builds only after a restart of dockerd, whose\n  BuildKit reads this directory when it starts):"
    );
    for h in &issued.hosts {
        let hp = host_port(h, port);
        let _ = writeln!(s, "    mkdir -p /etc/docker/certs.d/{hp}");
        let _ = writeln!(s, "    cp {ca} /etc/docker/certs.d/{hp}/ca.crt");
    }
    let _ = writeln!(s, "    systemctl restart docker");
    let _ = writeln!(
        s,
        "\n  BuildKit (a buildx docker-container builder or a standalone buildkitd), in buildkitd.toml:"
    );
    for h in &issued.hosts {
        let _ = writeln!(
            s,
            "    [registry.\"{}\"]\n      ca=[\"{ca}\"]",
            host_port(h, port)
        );
    }
    let _ = writeln!(
        s,
        "    (for a buildx builder: docker buildx create --config buildkitd.toml copies the CA into it)"
    );
    let _ = writeln!(
        s,
        "\n  The system store (curl, skopeo, ferry sync):\n    Debian/Ubuntu: cp {ca} /usr/local/share/ca-certificates/ferry-mirror.crt && update-ca-certificates\n    RHEL/Fedora:   cp {ca} /etc/pki/ca-trust/source/anchors/ferry-mirror.crt && update-ca-trust\n    or per command: ferry sync --ca-file {ca} …"
    );
    s
}

/// `HOST:PORT` as docker spells a registry (IPv6 in brackets).
fn host_port(h: &str, port: u16) -> String {
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{h}]:{port}"),
        _ => format!("{h}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        for ok in ["mirror", "mirror.lan", "10.0.0.5", "fd00::2", "a-b.c0"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "mirror:5000",
            "-x.lan",
            "a..b",
            "with space",
            "ünï",
            "a/b",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_writes_a_usable_pair_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["mirror.lan".to_owned(), "192.0.2.7".to_owned()];
        let issued = init(&hosts, dir.path(), 30, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.server_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The key and certificate load as a server configuration.
        ServerTls::load(&issued.server_cert, &issued.server_key).unwrap();
        assert!(matches!(
            init(&hosts, dir.path(), 30, false),
            Err(Error::Usage(_))
        ));
        let before = std::fs::read(&issued.ca_cert).unwrap();
        init(&hosts, dir.path(), 30, true).unwrap();
        assert_ne!(before, std::fs::read(&issued.ca_cert).unwrap());
        let text = instructions(&issued, 5443);
        assert!(text.contains(&format!(
            "cp {} /etc/docker/certs.d/192.0.2.7:5443/ca.crt",
            issued.ca_cert.display()
        )));
        assert!(text.contains("[registry.\"mirror.lan:5443\"]"));
        // No stray temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_mismatched_pair_is_refused_and_reload_keeps_the_old_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned()];
        let ia = init(&hosts, a.path(), 1, false).unwrap();
        let ib = init(&hosts, b.path(), 1, false).unwrap();
        assert!(ServerTls::load(&ia.server_cert, &ib.server_key).is_err());
        let tls = ServerTls::load(&ia.server_cert, &ia.server_key).unwrap();
        let before = tls.config();
        std::fs::write(&ia.server_key, b"not a key").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.config()));
    }
}
