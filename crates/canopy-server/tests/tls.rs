//! TLS, black box: a throwaway PKI made at test time with rcgen (a CA, server and client
//! certificates, an expired one, one from a foreign CA), real `canopy-server` and Debian
//! `nats-server` processes, async-nats clients.
//!
//! Covered: client TLS with `verify` (async-nats with CA and client certificate), refusals
//! with a clear log line and the `tls_handshake_failures` counter (no client certificate,
//! unknown CA, expired certificate, pin mismatch), `allow_non_tls`, `handshake_first`, leaf
//! remotes over TLS with client certificates (Canopy↔Canopy, Go hub + Canopy leaf, Canopy
//! hub + Go leaf), hostname mismatch, the misplaced `leafnodes { tls }` block (nats-server
//! #2868), routes over TLS (Canopy+Canopy, Canopy+Go), HTTPS monitoring, `verify_and_map`
//! (SAN email and subject DN pick the user; an unmapped certificate is refused) and
//! refused settings.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions};
use canopy_testkit::{free_fixed_port, nats_server_bin, Impl, ServerProcess};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const SETTLE: Duration = Duration::from_secs(10);

/// Certificate files written into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

/// Paths of one issued certificate.
#[derive(Clone)]
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    /// SHA-256 of the SubjectPublicKeyInfo, hex (nats-server's pinned_certs form).
    spki_sha256: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IPs), usable as server and client.
    fn issue(&self, file: &str, names: &[&str], expired: bool) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, file);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let cp = self.dir.path().join(format!("{file}-cert.pem"));
        let kp = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cp, cert.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        let spki = canopy_server::auth::tls::spki_sha256(cert.der()).unwrap();
        // Cross-check our DER walk against rcgen's own encoding of the key.
        let direct: String = {
            use sha2::Digest;
            sha2::Sha256::digest(key.public_key_der())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(spki, direct);
        Issued {
            cert: cp,
            key: kp,
            spki_sha256: spki,
        }
    }
}

impl Pki {
    /// A client certificate with subject `CN=<cn>,O=acme` (RFC 2253 order) and optionally a
    /// SAN email.
    fn issue_person(&self, cn: &str, email: Option<&str>) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded O then CN, so RFC 2253 (last RDN first) reads "CN=..,O=acme".
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "acme");
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(e) = email {
            p.subject_alt_names
                .push(rcgen::SanType::Rfc822Name(e.try_into().unwrap()));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let cp = self.dir.path().join(format!("{cn}-cert.pem"));
        let kp = self.dir.path().join(format!("{cn}-key.pem"));
        std::fs::write(&cp, cert.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        Issued {
            cert: cp,
            key: kp,
            spki_sha256: canopy_server::auth::tls::spki_sha256(cert.der()).unwrap(),
        }
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn tls_block(i: &Issued, ca: Option<&Path>, extra: &str) -> String {
    let mut s = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
        p(&i.cert),
        p(&i.key)
    );
    if let Some(ca) = ca {
        s.push_str(&format!("  ca_file: \"{}\"\n", p(ca)));
    }
    s.push_str(extra);
    s.push_str("\n}\n");
    s
}

fn have_go() -> bool {
    if nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipping interop part");
        return false;
    }
    true
}

async fn tls_client(
    port: u16,
    ca: &Path,
    cert: Option<&Issued>,
) -> Result<Client, async_nats::ConnectError> {
    let mut o = ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_path_buf())
        .connection_timeout(Duration::from_secs(3));
    if let Some(c) = cert {
        o = o.add_client_certificate(c.cert.clone(), c.key.clone());
    }
    o.connect(format!("tls://127.0.0.1:{port}")).await
}

async fn plain_client(port: u16) -> Client {
    async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// Publishes on `a` until `b` receives (interest may take a moment to cross links).
async fn expect_flow(a: &Client, b: &Client, subject: &str) {
    let mut sub = b.subscribe(subject.to_string()).await.unwrap();
    b.flush().await.unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        a.publish(subject.to_string(), "hello".into())
            .await
            .unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&m.payload[..], b"hello");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no message on {subject} within {SETTLE:?}"
        );
    }
}

/// Waits until `cond(log)` holds for the server's log.
fn wait_log(s: &ServerProcess, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let log = s.log();
        if cond(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "log never showed {what}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn varz_failures(s: &ServerProcess) -> u64 {
    s.monitor("/varz").unwrap()["tls_handshake_failures"]
        .as_u64()
        .unwrap()
}

fn wait_varz(s: &ServerProcess, key: &str, at_least: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let n = s.monitor("/varz").unwrap()[key].as_u64().unwrap_or(0);
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "varz {key} stayed at {n} (< {at_least}); log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client_tls_server(pki: &Pki, srv: &Issued, extra: &str) -> ServerProcess {
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{}",
        tls_block(srv, Some(&pki.ca()), extra)
    );
    ServerProcess::canopy(&conf).unwrap()
}

#[tokio::test]
async fn async_nats_with_client_cert_verify() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["localhost", "127.0.0.1"], false);
    let cli = pki.issue("client", &["client"], false);
    let s = client_tls_server(&pki, &srv, "verify: true");
    let a = tls_client(s.port, &pki.ca(), Some(&cli)).await.unwrap();
    let b = tls_client(s.port, &pki.ca(), Some(&cli)).await.unwrap();
    expect_flow(&a, &b, "tls.flow").await;
    let v = s.monitor("/varz").unwrap();
    assert_eq!(v["tls_required"], true);
    assert_eq!(v["tls_verify"], true);
    assert_eq!(v["tls_handshake_failures"], 0);
    let c = s.monitor("/connz").unwrap();
    let tv = c["connections"][0]["tls_version"].as_str().unwrap_or("");
    assert!(tv.starts_with("1."), "connz tls_version {tv:?}");

    // INFO in plaintext announces TLS (and verify) before any handshake.
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut raw), &mut line).unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    assert!(line.contains("\"tls_required\":true"), "{line}");
    assert!(line.contains("\"tls_verify\":true"), "{line}");
}

#[tokio::test]
async fn verify_and_map_picks_the_user_from_the_certificate() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["localhost", "127.0.0.1"], false);
    let alice = pki.issue_person("alice", Some("alice@example.com"));
    let bob = pki.issue_person("bob", None);
    let stranger = pki.issue("stranger", &["stranger.example.com"], false);
    let users = r#"
authorization {
  users: [
    { user: "alice@example.com", permissions: { publish: "alice.>", subscribe: "alice.>" } }
    { user: "CN=bob,O=acme" }
  ]
}
"#;
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{}{users}",
        tls_block(&srv, Some(&pki.ca()), "verify_and_map: true")
    );
    let s = ServerProcess::canopy(&conf).unwrap();
    // No user or password: the SAN email maps alice, the subject DN maps bob.
    let a = tls_client(s.port, &pki.ca(), Some(&alice))
        .await
        .unwrap_or_else(|e| panic!("alice: {e}\n{}", s.log()));
    let b = tls_client(s.port, &pki.ca(), Some(&bob))
        .await
        .unwrap_or_else(|e| panic!("bob: {e}\n{}", s.log()));
    expect_flow(&a, &b, "alice.x").await;
    let connz = s.monitor("/connz?auth=true").unwrap().to_string();
    assert!(connz.contains("alice@example.com"), "{connz}");
    assert!(connz.contains("CN=bob,O=acme"), "{connz}");
    // alice has her user's permissions: publishing outside alice.> is refused.
    let mut other = b.subscribe("other.x").await.unwrap();
    b.flush().await.unwrap();
    a.publish("other.x", "no".into()).await.unwrap();
    a.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other.next())
            .await
            .is_err(),
        "alice published outside her permissions"
    );
    wait_log(&s, "the permissions violation", |l| {
        l.contains("Publish Violation - User \"alice@example.com\", Subject \"other.x\"")
    });
    // A verified certificate that maps to no user is refused, the subject logged.
    assert!(tls_client(s.port, &pki.ca(), Some(&stranger))
        .await
        .is_err());
    let log = wait_log(&s, "the unmapped subject", |l| l.contains("CN=stranger"));
    assert!(log.contains("no user mapped"), "{log}");
    // Without a client certificate the handshake itself fails (verify is implied).
    assert!(tls_client(s.port, &pki.ca(), None).await.is_err());
}

#[tokio::test]
async fn refusals_are_logged_with_reason_and_counted() {
    let pki = Pki::new("ca");
    let other = Pki::new("other-ca");
    let srv = pki.issue("server", &["127.0.0.1"], false);
    let good = pki.issue("client", &["client"], false);
    let foreign = other.issue("foreign", &["client"], false);
    let expired = pki.issue("expired", &["client"], true);
    let s = client_tls_server(&pki, &srv, "verify: true");

    // No client certificate.
    assert!(tls_client(s.port, &pki.ca(), None).await.is_err());
    wait_log(&s, "missing client certificate", |l| {
        l.contains("TLS handshake error on the client listener")
            && l.contains("client certificate required")
    });
    // A client certificate from another CA.
    assert!(tls_client(s.port, &pki.ca(), Some(&foreign)).await.is_err());
    wait_log(&s, "unknown CA", |l| l.contains("unknown authority"));
    // An expired client certificate.
    assert!(tls_client(s.port, &pki.ca(), Some(&expired)).await.is_err());
    wait_log(&s, "expired", |l| l.contains("has expired"));
    // A client that does not trust our CA: it aborts, we say so.
    assert!(tls_client(s.port, &other.ca(), Some(&good)).await.is_err());
    wait_log(&s, "client rejecting us", |l| {
        l.contains("the peer rejected our certificate")
            || l.contains("the peer closed the connection")
    });
    // A plaintext client on the TLS port.
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    std::io::Write::write_all(&mut raw, b"CONNECT {}\r\nPING\r\n").unwrap();
    wait_log(&s, "plaintext", |l| l.contains("did not speak TLS"));
    wait_varz(&s, "tls_handshake_failures", 5);
    // Other clients are unaffected.
    let a = tls_client(s.port, &pki.ca(), Some(&good)).await.unwrap();
    a.flush().await.unwrap();
}

#[tokio::test]
async fn allow_non_tls_and_handshake_first() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["127.0.0.1"], false);
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nallow_non_tls: true\n{}",
        tls_block(&srv, Some(&pki.ca()), "")
    );
    let s = ServerProcess::canopy(&conf).unwrap();
    let plain = plain_client(s.port).await;
    let secure = tls_client(s.port, &pki.ca(), None).await.unwrap();
    expect_flow(&plain, &secure, "mixed").await;
    let c = s.monitor("/connz").unwrap();
    let versions: Vec<String> = c["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tls_version"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(versions.iter().any(|v| v.is_empty()), "{versions:?}");
    assert!(versions.iter().any(|v| v.starts_with("1.")), "{versions:?}");

    let s2 = client_tls_server(&pki, &srv, "handshake_first: true");
    let c = ConnectOptions::new()
        .tls_first()
        .add_root_certificates(pki.ca())
        .connect(format!("tls://127.0.0.1:{}", s2.port))
        .await
        .unwrap();
    c.flush().await.unwrap();
}

#[tokio::test]
async fn pinned_certs_on_the_client_listener() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["127.0.0.1"], false);
    let good = pki.issue("client", &["client"], false);
    let other = pki.issue("other", &["client"], false);
    let extra = format!("verify: true\npinned_certs: [\"{}\"]", good.spki_sha256);
    let s = client_tls_server(&pki, &srv, &extra);
    let c = tls_client(s.port, &pki.ca(), Some(&good)).await.unwrap();
    c.flush().await.unwrap();
    // TLS 1.3: the client finishes first, so the refusal may show only on first use.
    let refused = match tls_client(s.port, &pki.ca(), Some(&other)).await {
        Err(_) => true,
        Ok(c) => tokio::time::timeout(Duration::from_secs(2), c.flush())
            .await
            .map_or(true, |r| r.is_err()),
    };
    assert!(refused);
    wait_log(&s, "pin mismatch", |l| {
        l.contains("not in pinned_certs") && l.contains(&other.spki_sha256)
    });
}

fn hub_conf(pki: &Pki, hub: &Issued, leaf_port: u16, verify: bool) -> String {
    format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: hub\nleafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n  {}\n}}\n",
        tls_block(hub, Some(&pki.ca()), if verify { "verify: true" } else { "" })
    )
}

fn leaf_conf(pki: &Pki, leaf: Option<&Issued>, leaf_port: u16, extra: &str) -> String {
    let tls = leaf
        .map(|l| tls_block(l, Some(&pki.ca()), extra))
        .unwrap_or_default();
    format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: leaf\nleafnodes {{\n  remotes: [ {{\n    url: \"tls://127.0.0.1:{leaf_port}\"\n    {tls}\n  }} ]\n}}\n"
    )
}

async fn leaf_pair(hub_impl: Impl, leaf_impl: Impl) {
    let pki = Pki::new("ca");
    let hub_cert = pki.issue("hub", &["127.0.0.1", "localhost"], false);
    let leaf_cert = pki.issue("leaf", &["leaf.example"], false);
    let lp = free_fixed_port();
    let hub = ServerProcess::start(hub_impl, &hub_conf(&pki, &hub_cert, lp, true), &[]).unwrap();
    let leaf =
        ServerProcess::start(leaf_impl, &leaf_conf(&pki, Some(&leaf_cert), lp, ""), &[]).unwrap();
    wait_varz(&hub, "leafnodes", 1);
    let h = plain_client(hub.port).await;
    let l = plain_client(leaf.port).await;
    expect_flow(&l, &h, "up.leaf").await;
    expect_flow(&h, &l, "down.leaf").await;
    if hub_impl == Impl::Canopy {
        assert_eq!(varz_failures(&hub), 0, "{}", hub.log());
        let leafz = hub.monitor("/leafz").unwrap();
        assert_eq!(leafz["leafs"].as_array().map(Vec::len), Some(1), "{leafz}");
    }
}

#[tokio::test]
async fn leaf_over_tls_canopy_to_canopy() {
    leaf_pair(Impl::Canopy, Impl::Canopy).await;
}

#[tokio::test]
async fn leaf_over_tls_go_hub_canopy_leaf() {
    if have_go() {
        leaf_pair(Impl::NatsServer, Impl::Canopy).await;
    }
}

#[tokio::test]
async fn leaf_over_tls_canopy_hub_go_leaf() {
    if have_go() {
        leaf_pair(Impl::Canopy, Impl::NatsServer).await;
    }
}

#[tokio::test]
async fn leaf_errors_name_the_remote_and_the_reason() {
    let pki = Pki::new("ca");
    // The hub's certificate is for another name than the one dialled.
    let wrong_name = pki.issue("hub", &["hub.example"], false);
    let leaf_cert = pki.issue("leaf", &["leaf.example"], false);
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&hub_conf(&pki, &wrong_name, lp, true)).unwrap();
    let leaf = ServerProcess::canopy(&leaf_conf(&pki, Some(&leaf_cert), lp, "")).unwrap();
    let log = wait_log(&leaf, "hostname mismatch", |l| {
        l.contains("hostname mismatch")
    });
    assert!(log.contains(&format!("127.0.0.1:{lp}")), "{log}");
    wait_varz(&leaf, "tls_handshake_failures", 1);
    drop((hub, leaf));

    // The leaf presents no certificate to a hub that verifies.
    let hub_cert = pki.issue("hub2", &["127.0.0.1"], false);
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&hub_conf(&pki, &hub_cert, lp, true)).unwrap();
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{\n  remotes: [ {{ url: \"tls://127.0.0.1:{lp}\", tls: {{ ca_file: \"{}\" }} }} ]\n}}\n",
        p(&pki.ca())
    );
    let leaf = ServerProcess::canopy(&conf).unwrap();
    wait_log(&leaf, "certificate required on the leaf", |l| {
        l.contains(&format!("127.0.0.1:{lp}")) && l.contains("set cert_file and key_file")
    });
    wait_log(&hub, "missing client cert on the hub", |l| {
        l.contains("TLS handshake error on the leafnode listener")
            && l.contains("client certificate required")
    });
    drop((hub, leaf));

    // The same against a Go hub: its refusal arrives as a TLS alert after the handshake.
    if have_go() {
        let lp = free_fixed_port();
        let hub = ServerProcess::nats_server(&hub_conf(&pki, &hub_cert, lp, true)).unwrap();
        let conf = format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{\n  remotes: [ {{ url: \"tls://127.0.0.1:{lp}\", tls: {{ ca_file: \"{}\" }} }} ]\n}}\n",
            p(&pki.ca())
        );
        let leaf = ServerProcess::canopy(&conf).unwrap();
        wait_log(&leaf, "Go hub refusing a leaf without certificate", |l| {
            l.contains(&format!("127.0.0.1:{lp}"))
                && l.contains("TLS handshake error")
                && l.contains("set cert_file and key_file")
        });
        wait_varz(&leaf, "tls_handshake_failures", 1);
        drop((hub, leaf));
    }

    // nats-server #2868: the tls block under leafnodes instead of the remote.
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&hub_conf(&pki, &hub_cert, lp, true)).unwrap();
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{\n  {}\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{lp}\" }} ]\n}}\n",
        tls_block(&leaf_cert, Some(&pki.ca()), "")
    );
    let leaf = ServerProcess::canopy(&conf).unwrap();
    wait_log(&leaf, "misplaced block warning", |l| {
        l.contains("no leafnode listener") && l.contains("Put it inside each remote")
    });
    wait_log(&leaf, "hint at the failure", |l| {
        l.contains("move it into this remote")
    });
    drop(hub);
}

fn route_conf(pki: &Pki, cert: &Issued, name: &str, port: u16, peer: u16) -> String {
    format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: {name}\ncluster {{\n  name: C\n  listen: 127.0.0.1:{port}\n  routes: [\"nats-route://127.0.0.1:{peer}\"]\n  {}\n}}\n",
        tls_block(cert, Some(&pki.ca()), "")
    )
}

async fn route_pair(b_impl: Impl) {
    let pki = Pki::new("ca");
    let ca = pki.issue("a", &["127.0.0.1"], false);
    let cb = pki.issue("b", &["127.0.0.1"], false);
    let (pa, pb) = (free_fixed_port(), free_fixed_port());
    let a = ServerProcess::canopy(&route_conf(&pki, &ca, "a", pa, pb)).unwrap();
    let b = ServerProcess::start(b_impl, &route_conf(&pki, &cb, "b", pb, pa), &[]).unwrap();
    wait_varz(&a, "routes", 1);
    let ca_ = plain_client(a.port).await;
    let cb_ = plain_client(b.port).await;
    expect_flow(&ca_, &cb_, "route.ab").await;
    expect_flow(&cb_, &ca_, "route.ba").await;
    assert_eq!(varz_failures(&a), 0, "{}", a.log());
    let rz = a.monitor("/routez").unwrap();
    assert_eq!(rz["num_routes"], 1, "{rz}");
}

#[tokio::test]
async fn routes_over_tls_canopy_canopy() {
    route_pair(Impl::Canopy).await;
}

#[tokio::test]
async fn routes_over_tls_canopy_go() {
    if have_go() {
        route_pair(Impl::NatsServer).await;
    }
}

#[tokio::test]
async fn route_with_a_foreign_certificate_is_refused() {
    let pki = Pki::new("ca");
    let other = Pki::new("other");
    let ca = pki.issue("a", &["127.0.0.1"], false);
    let cb = other.issue("b", &["127.0.0.1"], false);
    let (pa, pb) = (free_fixed_port(), free_fixed_port());
    let a = ServerProcess::canopy(&route_conf(&pki, &ca, "a", pa, pb)).unwrap();
    // b trusts our CA for a's certificate but presents one from another CA.
    let b_conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\ncluster {{\n  name: C\n  listen: 127.0.0.1:{pb}\n  routes: [\"nats-route://127.0.0.1:{pa}\"]\n  {}\n}}\n",
        tls_block(&cb, Some(&pki.ca()), "")
    );
    let b = ServerProcess::canopy(&b_conf).unwrap();
    wait_log(&a, "unknown CA on the route listener", |l| {
        l.contains("TLS handshake error on the route listener") && l.contains("unknown authority")
    });
    wait_log(&b, "dial side error", |l| {
        l.contains("TLS route handshake error with")
    });
    assert_eq!(a.monitor("/varz").unwrap()["routes"], 0);
}

#[tokio::test]
async fn https_monitoring() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["127.0.0.1"], false);
    let hp = free_fixed_port();
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttps: 127.0.0.1:{hp}\n{}",
        tls_block(&srv, Some(&pki.ca()), "")
    );
    let _s = ServerProcess::canopy(&conf).unwrap();
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.ca()).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hp))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /varz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    let _ = tls.read_to_string(&mut body).await;
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("\"https_port\":"), "{body}");
}

#[test]
fn unsupported_settings_are_refused_at_start() {
    let pki = Pki::new("ca");
    let srv = pki.issue("server", &["127.0.0.1"], false);
    for (extra, needle) in [
        (
            "cipher_suites: [\"TLS_RSA_WITH_RC4_128_SHA\"]",
            "TLS_RSA_WITH_RC4_128_SHA",
        ),
        ("curve_preferences: [\"CurveP521\"]", "CurveP521"),
        ("min_version: \"1.1\"", "min_version"),
        ("pinned_certs: [\"nothex\"]", "pinned_certs"),
    ] {
        let conf = format!(
            "listen: 127.0.0.1:-1\n{}",
            tls_block(&srv, Some(&pki.ca()), extra)
        );
        let err = match ServerProcess::canopy(&conf) {
            Ok(_) => panic!("started with {extra}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{extra}: {err}");
    }
    // verify_and_map maps client users only: refused on the leafnode listener.
    let conf = format!(
        "listen: 127.0.0.1:-1\nleafnodes {{\n  listen: 127.0.0.1:-1\n{}}}\n",
        tls_block(&srv, Some(&pki.ca()), "verify_and_map: true")
    );
    let err = ServerProcess::canopy(&conf).err().unwrap().to_string();
    assert!(err.contains("verify_and_map"), "{err}");
    // A missing certificate file stops the start, naming the file.
    let conf = "listen: 127.0.0.1:-1\ntls { cert_file: \"/nonexistent/c.pem\", key_file: \"/nonexistent/k.pem\" }\n";
    let err = ServerProcess::canopy(conf).err().unwrap().to_string();
    assert!(
        err.contains("cannot read certificate file /nonexistent/c.pem"),
        "{err}"
    );
    // Accepted mapping of Go names.
    let conf = format!(
        "listen: 127.0.0.1:-1\n{}",
        tls_block(
            &srv,
            Some(&pki.ca()),
            "cipher_suites: [\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\", \"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305\"]\ncurve_preferences: [\"X25519\", \"CurveP256\"]\nmin_version: \"1.2\"\ntimeout: 1.5"
        )
    );
    ServerProcess::canopy(&conf).unwrap();
}
