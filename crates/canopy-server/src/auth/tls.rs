//! TLS with rustls (ring provider) for every listener and every outgoing connection: builds
//! server and client configurations from `canopy_conf::TlsConfig`, runs the handshakes in
//! nats-server's order, checks `pinned_certs`, and turns handshake failures into one log
//! line with a reason a person can act on (expired certificate, unknown CA, missing client
//! certificate, hostname mismatch, ...).
//!
//! Order on the wire (as nats-server 2.9/2.10):
//! - client and leafnode listeners: INFO in plaintext (`tls_required`), then the peer starts
//!   the handshake; `handshake_first` does TLS before INFO; `allow_non_tls` (clients) looks at
//!   the first byte to tell a ClientHello from plaintext;
//! - leaf remotes read INFO in plaintext, then upgrade as a TLS client;
//! - routes do TLS at once on both sides, before INFO/CONNECT, and both sides present and
//!   verify certificates.
//!
//! The connection code is generic over the stream; [`MaybeTls`] is the one stream type the
//! roles see after the accept/dial point, plain or encrypted.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use canopy_conf::{HandshakeFirst, Options, Pos, TlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use canopy_proto::ServerInfo;

use crate::core::conn::{conn_label, ConnShared};
use crate::core::stats::ServerStats;

/// The label of the top-level (client listener) block.
const CLIENT_TLS: &str = "client TLS";

/// nats-server's default handshake timeout (`timeout` in a `tls {}` block).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A TLS configuration that cannot be used, with where it was written.
#[derive(Debug, thiserror::Error)]
#[error("{pos}: {what}: {msg}")]
pub struct TlsConfigError {
    pub pos: Pos,
    /// Which block: "client TLS", "leafnode TLS", "cluster TLS", "leafnode remote TLS".
    pub what: String,
    pub msg: String,
}

/// The accepting side of one listener.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    /// Client certificates are required and checked.
    pub verify: bool,
    pub timeout: Duration,
    pub handshake_first: Option<HandshakeFirst>,
    pinned: Vec<String>,
}

/// The dialling side (a leaf remote, routes).
pub struct ClientTls {
    connector: TlsConnector,
    pub timeout: Duration,
    pub handshake_first: bool,
    pinned: Vec<String>,
    /// `insecure: true`: the server certificate is not checked.
    pub insecure: bool,
    /// A client certificate is configured (cert_file/key_file).
    pub has_cert: bool,
}

/// Every TLS configuration of the server, built once at start (and on reload).
#[derive(Default)]
pub struct TlsSet {
    /// Top-level `tls {}`: the client listener.
    pub client: Option<Arc<ServerTls>>,
    /// `leafnodes { tls {} }`: the leafnode listener.
    pub leaf: Option<Arc<ServerTls>>,
    /// `cluster { tls {} }`, accepting side.
    pub route: Option<Arc<ServerTls>>,
    /// `cluster { tls {} }`, dialling side (the same certificate, presented as a client).
    pub route_dial: Option<Arc<ClientTls>>,
    /// `https_port`: the top-level certificate without client verification.
    pub https: Option<Arc<ServerTls>>,
    /// `websocket { tls {} }`: TLS before the HTTP upgrade (wss://).
    pub websocket: Option<Arc<ServerTls>>,
}

impl TlsSet {
    /// Builds (and so checks: files, keys, suites, curves) every TLS block of `o`.
    pub fn build(o: &Options) -> Result<TlsSet, TlsConfigError> {
        let mut set = TlsSet::default();
        if let Some(t) = &o.tls {
            set.client = Some(Arc::new(ServerTls::new(t, CLIENT_TLS, false)?));
            if o.https_port.is_some() {
                let mut plain = t.clone();
                plain.verify = false;
                plain.verify_and_map = false;
                plain.handshake_first = Some(HandshakeFirst::Always);
                set.https = Some(Arc::new(ServerTls::new(&plain, "HTTPS monitoring", false)?));
            }
        } else if let Some(p) = o.https_port {
            return Err(TlsConfigError {
                pos: o.key_pos.get("https_port").cloned().unwrap_or_default(),
                what: "HTTPS monitoring".into(),
                msg: format!(
                    "https_port {p} needs a top-level tls {{}} block with cert_file and key_file"
                ),
            });
        }
        if let Some(lo) = &o.leafnodes {
            if let Some(t) = &lo.tls {
                set.leaf = Some(Arc::new(ServerTls::new(t, "leafnode TLS", false)?));
            }
            for r in &lo.remotes {
                if let Some(t) = &r.tls {
                    ClientTls::new(Some(t), "leafnode remote TLS")?;
                }
            }
        }
        if let Some(t) = o.websocket.as_ref().and_then(|w| w.tls.as_ref()) {
            set.websocket = Some(Arc::new(ServerTls::new(t, "websocket TLS", false)?));
        }
        if let Some(c) = &o.cluster {
            if let Some(t) = &c.tls {
                // nats-server always requires and verifies certificates on both route sides.
                set.route = Some(Arc::new(ServerTls::new(t, "cluster TLS", true)?));
                set.route_dial = Some(Arc::new(ClientTls::new(Some(t), "cluster TLS")?));
            }
        }
        Ok(set)
    }
}

/// Every TLS block of `o` with its label and whether it is a listener's.
fn blocks(o: &Options) -> Vec<(&TlsConfig, &'static str, bool)> {
    let mut v = Vec::new();
    if let Some(t) = &o.tls {
        v.push((t, CLIENT_TLS, true));
    }
    if let Some(lo) = &o.leafnodes {
        if let Some(t) = &lo.tls {
            v.push((t, "leafnode TLS", true));
        }
        for r in &lo.remotes {
            if let Some(t) = &r.tls {
                v.push((t, "leafnode remote TLS", false));
            }
        }
    }
    if let Some(c) = &o.cluster {
        if let Some(t) = &c.tls {
            v.push((t, "cluster TLS", true));
        }
    }
    v
}

/// The checks that need no file (settings Canopy cannot honour, suites, curves, versions,
/// pins, a listener without a certificate): `-t` runs these, so the shipped examples whose
/// certificates are made later still pass it; the files are read at start and on reload.
pub fn check(o: &Options) -> Result<(), TlsConfigError> {
    for (t, what, listener) in blocks(o) {
        refuse_unsupported(t, what)?;
        provider(t, what)?;
        versions(t, what)?;
        check_pins(t, what)?;
        if listener && (t.cert_file.is_none() || t.key_file.is_none()) {
            return Err(cfg_err(
                t,
                what,
                "a listener's tls block needs cert_file and key_file",
            ));
        }
    }
    if o.https_port.is_some() && o.tls.is_none() {
        return Err(TlsConfigError {
            pos: o.key_pos.get("https_port").cloned().unwrap_or_default(),
            what: "HTTPS monitoring".into(),
            msg: "https_port needs a top-level tls {} block with cert_file and key_file".into(),
        });
    }
    Ok(())
}

/// Startup warnings about TLS blocks that will not do what they seem to (nats-server
/// #2868: a `tls {}` under `leafnodes` meant for the remotes).
pub fn warnings(o: &Options) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(lo) = &o.leafnodes {
        if let Some(t) = &lo.tls {
            if lo.port == 0 && !lo.remotes.is_empty() {
                let bare = lo.remotes.iter().filter(|r| r.tls.is_none()).count();
                out.push(format!(
                    "{}: this tls {{}} block is under leafnodes, where it configures the leafnode \
                     listener, but this server has no leafnode listener (no port); it does NOT \
                     apply to the remotes ({bare} of {} remotes have no tls block of their own). \
                     Put it inside each remote: remotes: [ {{ url: ..., tls: {{ ... }} }} ]",
                    t.pos,
                    lo.remotes.len()
                ));
            }
        }
        for r in &lo.remotes {
            if r.tls.as_ref().is_some_and(|t| t.insecure) {
                out.push(format!(
                    "{}: leafnode remote {:?} has insecure: true: the hub's certificate chain and \
                     hostname are not verified. DO NOT USE IN PRODUCTION!",
                    r.pos, r.urls
                ));
            }
        }
    }
    if o.allow_non_tls && o.tls.is_none() {
        out.push("allow_non_tls is set but there is no top-level tls {} block".into());
    }
    out
}

fn cfg_err(t: &TlsConfig, what: &str, msg: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        pos: t.pos.clone(),
        what: what.to_string(),
        msg: msg.into(),
    }
}

/// Refuses what Canopy cannot honour rather than silently ignoring it.
fn refuse_unsupported(t: &TlsConfig, what: &str) -> Result<(), TlsConfigError> {
    if t.verify_and_map && what != CLIENT_TLS {
        return Err(cfg_err(
            t,
            what,
            "verify_and_map (certificate subject picks the user) is supported on the client \
             listener only (top-level tls {}); use verify: true with credentials here",
        ));
    }
    if t.verify_cert_and_check_known_urls {
        return Err(cfg_err(
            t,
            what,
            "verify_cert_and_check_known_urls is not supported yet; use verify: true",
        ));
    }
    if !t.certs.is_empty() {
        return Err(cfg_err(
            t,
            what,
            "certs: [...] (several certificates chosen by SNI) is not supported yet; use \
             cert_file and key_file",
        ));
    }
    if t.connection_rate_limit.is_some() {
        return Err(cfg_err(
            t,
            what,
            "connection_rate_limit is not supported yet",
        ));
    }
    Ok(())
}

/// The ring provider, narrowed to `cipher_suites` and `curve_preferences` (nats-server's
/// names; TLS 1.3 suites always stay, as in Go, unless named explicitly).
fn provider(t: &TlsConfig, what: &str) -> Result<Arc<CryptoProvider>, TlsConfigError> {
    let mut p = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let all = p.cipher_suites.clone();
        let names_13: Vec<&str> = t
            .cipher_suites
            .iter()
            .map(String::as_str)
            .filter(|n| is_tls13_name(n))
            .collect();
        let mut chosen = Vec::new();
        for name in &t.cipher_suites {
            let want = normalize_suite(name);
            let found = all
                .iter()
                .find(|s| normalize_suite(&format!("{:?}", s.suite())) == want);
            match found {
                Some(s) => {
                    if !chosen
                        .iter()
                        .any(|c: &rustls::SupportedCipherSuite| c.suite() == s.suite())
                    {
                        chosen.push(*s);
                    }
                }
                None => {
                    return Err(cfg_err(
                        t,
                        what,
                        format!(
                            "cipher suite \"{name}\" is not supported by Canopy's TLS library \
                             (rustls); supported: {}",
                            all.iter()
                                .map(|s| format!("{:?}", s.suite()).replace("TLS13_", "TLS_"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
            }
        }
        if names_13.is_empty() {
            for s in &all {
                if s.version() == &rustls::version::TLS13 {
                    chosen.push(*s);
                }
            }
        }
        p.cipher_suites = chosen;
    }
    if !t.curve_preferences.is_empty() {
        let all = p.kx_groups.clone();
        let mut chosen = Vec::new();
        for name in &t.curve_preferences {
            let group = match name.to_ascii_lowercase().as_str() {
                "x25519" | "curvex25519" => rustls::NamedGroup::X25519,
                "curvep256" | "p256" | "p-256" | "secp256r1" => rustls::NamedGroup::secp256r1,
                "curvep384" | "p384" | "p-384" | "secp384r1" => rustls::NamedGroup::secp384r1,
                _ => {
                    return Err(cfg_err(
                        t,
                        what,
                        format!(
                            "curve preference \"{name}\" is not supported by Canopy's TLS library \
                             (rustls); supported: X25519, CurveP256, CurveP384"
                        ),
                    ))
                }
            };
            if let Some(g) = all.iter().find(|g| g.name() == group) {
                chosen.push(*g);
            }
        }
        p.kx_groups = chosen;
    }
    Ok(Arc::new(p))
}

fn is_tls13_name(n: &str) -> bool {
    let n = n.to_ascii_uppercase();
    n.starts_with("TLS13_")
        || matches!(
            n.as_str(),
            "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
        )
}

/// Go spells the ChaCha suites without the `_SHA256` suffix and TLS 1.3 ones `TLS_...`.
fn normalize_suite(n: &str) -> String {
    let n = n.to_ascii_uppercase().replace("TLS13_", "TLS_");
    if n.contains("WITH_CHACHA20_POLY1305") {
        n.trim_end_matches("_SHA256").to_string()
    } else {
        n
    }
}

fn versions(
    t: &TlsConfig,
    what: &str,
) -> Result<&'static [&'static SupportedProtocolVersion], TlsConfigError> {
    static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    match t.min_version.as_deref().map(str::trim) {
        None | Some("") | Some("1.2") | Some("TLS1.2") | Some("tls1.2") => Ok(BOTH),
        Some("1.3") | Some("TLS1.3") | Some("tls1.3") => Ok(ONLY13),
        Some(v) => Err(cfg_err(
            t,
            what,
            format!(
                "min_version \"{v}\" is not supported (TLS 1.2 and 1.3 only: \"1.2\" or \"1.3\")"
            ),
        )),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certificate file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read private key file {}: {e}", path.display()))
}

fn load_roots(t: &TlsConfig, what: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match &t.ca_file {
        Some(ca) => {
            for c in load_certs(ca).map_err(|e| cfg_err(t, what, e))? {
                roots.add(c).map_err(|e| {
                    cfg_err(
                        t,
                        what,
                        format!("bad CA certificate in {}: {e}", ca.display()),
                    )
                })?;
            }
        }
        None => {
            // No ca_file: the system's roots, as Go does.
            if let Ok(certs) = rustls_native_certs::load_native_certs() {
                let _ = roots.add_parsable_certificates(certs);
            }
        }
    }
    Ok(roots)
}

fn check_pins(t: &TlsConfig, what: &str) -> Result<Vec<String>, TlsConfigError> {
    let mut out = Vec::new();
    for p in &t.pinned_certs {
        let p = p.trim().to_ascii_lowercase();
        if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(cfg_err(
                t,
                what,
                format!(
                    "pinned_certs entry \"{p}\" is not a hex-encoded SHA-256 of a DER \
                     SubjectPublicKeyInfo (64 hex digits)"
                ),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

impl ServerTls {
    /// `force_verify`: routes, which always require and check client certificates.
    pub fn new(t: &TlsConfig, what: &str, force_verify: bool) -> Result<ServerTls, TlsConfigError> {
        refuse_unsupported(t, what)?;
        let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
            return Err(cfg_err(
                t,
                what,
                "a listener's tls block needs cert_file and key_file",
            ));
        };
        let provider = provider(t, what)?;
        let certs = load_certs(cert).map_err(|e| cfg_err(t, what, e))?;
        let key = load_key(key).map_err(|e| cfg_err(t, what, e))?;
        let verify = t.verify || t.verify_and_map || force_verify;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(t, what)?)
            .map_err(|e| cfg_err(t, what, format!("TLS versions: {e}")))?;
        let builder = if verify {
            let roots = Arc::new(load_roots(t, what)?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| {
                    cfg_err(
                        t,
                        what,
                        format!("verify needs CA certificates (ca_file) to check clients: {e}"),
                    )
                })?;
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| cfg_err(t, what, format!("certificate/key: {e}")))?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verify,
            timeout: t.timeout.unwrap_or(DEFAULT_TIMEOUT),
            handshake_first: t.handshake_first.clone(),
            pinned: check_pins(t, what)?,
        })
    }
}

impl ClientTls {
    /// `t = None`: a `tls://` URL or a hub that requires TLS, without a tls block: system
    /// roots, no client certificate.
    pub fn new(t: Option<&TlsConfig>, what: &str) -> Result<ClientTls, TlsConfigError> {
        let default = TlsConfig::default();
        let t = t.unwrap_or(&default);
        refuse_unsupported(t, what)?;
        let provider = provider(t, what)?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(t, what)?)
            .map_err(|e| cfg_err(t, what, format!("TLS versions: {e}")))?;
        let builder = if t.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(
                    provider.signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(load_roots(t, what)?)
        };
        let (config, has_cert) = match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => {
                let certs = load_certs(c).map_err(|e| cfg_err(t, what, e))?;
                let key = load_key(k).map_err(|e| cfg_err(t, what, e))?;
                let cfg = builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| cfg_err(t, what, format!("certificate/key: {e}")))?;
                (cfg, true)
            }
            _ => (builder.with_no_client_auth(), false),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            timeout: t.timeout.unwrap_or(DEFAULT_TIMEOUT),
            handshake_first: matches!(t.handshake_first, Some(HandshakeFirst::Always)),
            pinned: check_pins(t, what)?,
            insecure: t.insecure,
            has_cert,
        })
    }
}

/// `insecure: true` on a remote: accept any server certificate (signatures are still
/// checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

/// A stream with bytes already read from it put back in front (the first byte looked at
/// by `allow_non_tls` or `handshake_first` fallback).
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<MaybeTls<S>> {
    pub fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl<S> Rewind<S> {
    pub fn new(inner: S) -> Self {
        Rewind {
            prefix: Vec::new(),
            pos: 0,
            inner,
        }
    }

    fn with_prefix(inner: S, prefix: Vec<u8>) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection after its accept/dial point: plaintext or TLS (either side).
pub enum MaybeTls<S> {
    Plain(Rewind<S>),
    Server(Box<tokio_rustls::server::TlsStream<Rewind<S>>>),
    Client(Box<tokio_rustls::client::TlsStream<Rewind<S>>>),
}

impl<S> MaybeTls<S> {
    pub fn plain(s: S) -> Self {
        MaybeTls::Plain(Rewind::new(s))
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, MaybeTls::Plain(_))
    }

    /// The plain stream back, for a TLS upgrade (None once encrypted or with unread
    /// replayed bytes).
    pub fn into_plain(self) -> Option<S> {
        match self {
            MaybeTls::Plain(r) if r.pos >= r.prefix.len() => Some(r.inner),
            _ => None,
        }
    }

    /// `("1.3", "TLS13_AES_128_GCM_SHA256")` once encrypted.
    pub fn tls_info(&self) -> Option<(String, String)> {
        let (v, c) = match self {
            MaybeTls::Plain(_) => return None,
            MaybeTls::Server(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            MaybeTls::Client(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
        };
        let v = match v {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        Some((v, c.map(|c| format!("{:?}", c.suite())).unwrap_or_default()))
    }

    pub fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Server(s) => s.get_ref().1.peer_certificates()?.first(),
            MaybeTls::Client(s) => s.get_ref().1.peer_certificates()?.first(),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => $e,
            MaybeTls::Server($s) => $e,
            MaybeTls::Client($s) => $e,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

// ---------------------------------------------------------------------------------------
// Handshakes and their errors
// ---------------------------------------------------------------------------------------

/// Why a handshake failed, worded for the log.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timeout after {0:?} (the peer did not complete the handshake)")]
    Timeout(Duration),
    #[error("{0}")]
    Tls(String),
    #[error("peer certificate is not in pinned_certs (its SubjectPublicKeyInfo SHA-256 is {0})")]
    NotPinned(String),
    #[error(
        "the peer sent plaintext where a TLS handshake was expected (is it configured for TLS?)"
    )]
    Plaintext,
    #[error("connection closed during the TLS handshake: {0}")]
    Io(String),
}

/// A rustls error in words a person can act on.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired => "the peer's certificate has expired".into(),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "the peer's certificate has expired (not after {}, now {})",
                fmt_time(not_after),
                fmt_time(time)
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet (check clocks)".into()
            }
            CertificateError::UnknownIssuer => {
                "the peer's certificate is signed by an unknown authority (not by a CA in ca_file)"
                    .into()
            }
            CertificateError::NotValidForName => {
                "hostname mismatch: the peer's certificate is not valid for the name dialled".into()
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "hostname mismatch: the peer's certificate is valid for {} but not for {:?}",
                if presented.is_empty() {
                    "no names".to_string()
                } else {
                    presented.join(", ")
                },
                expected.to_str()
            ),
            CertificateError::BadSignature => "the peer's certificate has a bad signature".into(),
            CertificateError::Revoked => "the peer's certificate is revoked".into(),
            other => format!("invalid peer certificate: {other:?}"),
        },
        E::NoCertificatesPresented => {
            "client certificate required (verify: true) but the peer presented none".into()
        }
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => {
                "the peer requires a client certificate and none was sent (set cert_file and \
                 key_file in this tls block)"
                    .into()
            }
            AlertDescription::UnknownCA => {
                "the peer rejected our certificate: unknown CA (our certificate is not signed by \
                 a CA in the peer's ca_file)"
                    .into()
            }
            AlertDescription::BadCertificate => {
                "the peer rejected our certificate (bad certificate: missing, unknown CA, or \
                 otherwise invalid for the peer)"
                    .into()
            }
            AlertDescription::CertificateExpired => {
                "the peer rejected our certificate: it has expired".into()
            }
            AlertDescription::HandshakeFailure => {
                "the peer aborted the handshake (handshake failure: no common cipher suite, \
                 curve or TLS version?)"
                    .into()
            }
            AlertDescription::ProtocolVersion => {
                "the peer refused the TLS version (min_version?)".into()
            }
            other => format!("the peer sent TLS alert {other:?}"),
        },
        E::PeerIncompatible(p) => format!("the peer is incompatible: {p:?}"),
        E::InvalidMessage(_) => {
            "the peer did not speak TLS (plaintext on a TLS port, or TLS expected at another \
             point in the protocol: check handshake_first on both sides)"
                .into()
        }
        other => other.to_string(),
    }
}

fn fmt_time(t: &UnixTime) -> String {
    let secs = t.as_secs() as i64;
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn classify(e: io::Error) -> HandshakeError {
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return HandshakeError::Tls(explain(r));
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => HandshakeError::Io(
            "the peer closed the connection (it may have rejected our certificate or not speak \
             TLS)"
                .into(),
        ),
        _ => HandshakeError::Io(e.to_string()),
    }
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo, lowercase hex (nats-server's
/// `pinned_certs` form).
pub fn spki_sha256(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let d = Sha256::digest(parsed.tbs_certificate.subject_pki.raw);
    Some(d.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_pinned<S>(s: &MaybeTls<S>, pinned: &[String]) -> Result<(), HandshakeError> {
    if pinned.is_empty() {
        return Ok(());
    }
    let got = s
        .peer_cert()
        .and_then(|c| spki_sha256(c.as_ref()))
        .unwrap_or_else(|| "(no certificate)".into());
    if pinned.contains(&got) {
        Ok(())
    } else {
        Err(HandshakeError::NotPinned(got))
    }
}

/// What an accepting listener did before the protocol starts.
pub struct Accepted<S> {
    pub stream: MaybeTls<S>,
    /// INFO already went out in plaintext; the caller must not queue it again.
    pub info_sent: bool,
}

async fn tls_accept<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &ServerTls,
    io: Rewind<S>,
) -> Result<MaybeTls<S>, HandshakeError> {
    let s = tokio::time::timeout(tls.timeout, tls.acceptor.accept(io))
        .await
        .map_err(|_| HandshakeError::Timeout(tls.timeout))?
        .map_err(classify)?;
    let s = MaybeTls::Server(Box::new(s));
    check_pinned(&s, &tls.pinned)?;
    Ok(s)
}

/// The accepting side of a client or leafnode listener: INFO (plaintext) then the
/// handshake, or the handshake first; with `allow_plain` (clients, `allow_non_tls`) a peer
/// that does not start TLS stays in plaintext.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &ServerTls,
    mut io: S,
    info: &[u8],
    allow_plain: bool,
) -> Result<Accepted<S>, HandshakeError> {
    const CLIENT_HELLO: u8 = 0x16;
    match tls.handshake_first {
        Some(HandshakeFirst::Always) => {
            let stream = tls_accept(tls, Rewind::new(io)).await?;
            return Ok(Accepted {
                stream,
                info_sent: false,
            });
        }
        Some(HandshakeFirst::Fallback(wait)) => {
            let mut b = [0u8; 1];
            match tokio::time::timeout(wait, io.read(&mut b)).await {
                Ok(Ok(1)) if b[0] == CLIENT_HELLO => {
                    let stream = tls_accept(tls, Rewind::with_prefix(io, b.to_vec())).await?;
                    return Ok(Accepted {
                        stream,
                        info_sent: false,
                    });
                }
                Ok(Ok(1)) => return Err(HandshakeError::Plaintext),
                Ok(Ok(_)) => {
                    return Err(HandshakeError::Io("the peer closed the connection".into()))
                }
                Ok(Err(e)) => return Err(HandshakeError::Io(e.to_string())),
                Err(_) => {} // No ClientHello in time: INFO first, as usual.
            }
        }
        None => {}
    }
    io.write_all(info)
        .await
        .map_err(|e| HandshakeError::Io(e.to_string()))?;
    if allow_plain {
        let mut b = [0u8; 1];
        let n = match tokio::time::timeout(tls.timeout.max(Duration::from_secs(2)), io.read(&mut b))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(HandshakeError::Io(e.to_string())),
            // Silent peer: stay in plaintext and let the auth timeout deal with it.
            Err(_) => 0,
        };
        let io = Rewind::with_prefix(io, b[..n].to_vec());
        if n == 1 && b[0] == CLIENT_HELLO {
            let stream = tls_accept(tls, io).await?;
            return Ok(Accepted {
                stream,
                info_sent: true,
            });
        }
        return Ok(Accepted {
            stream: MaybeTls::Plain(io),
            info_sent: true,
        });
    }
    let stream = tls_accept(tls, Rewind::new(io)).await?;
    Ok(Accepted {
        stream,
        info_sent: true,
    })
}

/// The accepting side of a route: TLS at once.
pub async fn accept_first<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &ServerTls,
    io: S,
) -> Result<MaybeTls<S>, HandshakeError> {
    tls_accept(tls, Rewind::new(io)).await
}

/// The dialling side: a TLS client handshake with SNI/verification against `host` (a
/// name or an IP address, checked against the certificate's SANs).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &ClientTls,
    io: S,
    host: &str,
) -> Result<MaybeTls<S>, HandshakeError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| HandshakeError::Tls(format!("invalid TLS server name {host:?}: {e}")))?;
    let s = tokio::time::timeout(tls.timeout, tls.connector.connect(name, Rewind::new(io)))
        .await
        .map_err(|_| HandshakeError::Timeout(tls.timeout))?
        .map_err(classify)?;
    let s = MaybeTls::Client(Box::new(s));
    check_pinned(&s, &tls.pinned)?;
    Ok(s)
}

/// The accept point of a client or leafnode connection: with `tls`, INFO and the
/// handshake in nats-server's order (a failure is logged once with the listener and the
/// reason, counted, and `None` returned); without, INFO is queued as usual. INFO always
/// reaches the peer exactly once.
pub async fn accept_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stats: &ServerStats,
    tls: Option<&ServerTls>,
    io: S,
    conn: &ConnShared,
    info: &ServerInfo,
    allow_plain: bool,
    listener: &str,
) -> Option<MaybeTls<S>> {
    let queue_info = || {
        conn.enqueue(|b| canopy_proto::encode_info(b, info));
        conn.flush_signal();
    };
    let Some(tls) = tls else {
        queue_info();
        return Some(MaybeTls::plain(io));
    };
    let mut raw = bytes::BytesMut::new();
    canopy_proto::encode_info(&mut raw, info);
    match accept(tls, io, &raw, allow_plain).await {
        Ok(a) => {
            if !a.info_sent {
                queue_info();
            }
            note_established(conn, &a.stream);
            Some(a.stream)
        }
        Err(e) => {
            count_failure(stats);
            tracing::error!(
                "{} - TLS handshake error on the {listener}: {e}",
                conn_label(conn)
            );
            None
        }
    }
}

/// The accept/dial point of a route: without cluster TLS the stream as is; with it, TLS
/// at once on both sides (`dial`: the route URL and its host, for SNI and verification).
/// The dialling side also reads the peer's first bytes (its INFO), so that a rejection
/// of our certificate (a TLS 1.3 alert after the handshake) counts as a handshake
/// failure; those bytes are replayed to the caller. Failures are logged once with the
/// URL or listener and the reason, counted, and `None` returned.
pub async fn route_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    set: &TlsSet,
    stats: &ServerStats,
    io: S,
    dial: Option<(&str, &str)>,
    conn: &ConnShared,
) -> Option<Rewind<MaybeTls<S>>> {
    let res = match (dial, &set.route, &set.route_dial) {
        (None, Some(tls), _) => accept_first(tls, io).await.map(Rewind::new),
        (Some((_, host)), _, Some(tls)) => match connect(tls, io, host).await {
            Ok(mut s) => {
                let mut first = vec![0u8; 4096];
                let wait = tls.timeout.max(Duration::from_secs(2));
                match tokio::time::timeout(wait, s.read(&mut first)).await {
                    Ok(Ok(0)) => Err(HandshakeError::Io(
                        "the peer closed the connection right after the handshake (it may have \
                         rejected our certificate)"
                            .into(),
                    )),
                    Ok(Ok(n)) => {
                        first.truncate(n);
                        Ok(Rewind::with_prefix(s, first))
                    }
                    Ok(Err(e)) => Err(classify(e)),
                    Err(_) => Ok(Rewind::new(s)),
                }
            }
            Err(e) => Err(e),
        },
        _ => return Some(Rewind::new(MaybeTls::plain(io))),
    };
    match res {
        Ok(s) => {
            note_established(conn, &s.inner);
            Some(s)
        }
        Err(e) => {
            count_failure(stats);
            match dial {
                Some((url, _)) => tracing::error!(
                    "{} - TLS route handshake error with {url}: {e}",
                    conn_label(conn)
                ),
                None => tracing::error!(
                    "{} - TLS handshake error on the route listener: {e}",
                    conn_label(conn)
                ),
            }
            None
        }
    }
}

/// Records the negotiated version for `/connz` and logs it at debug level.
pub fn note_established<S>(conn: &ConnShared, s: &MaybeTls<S>) {
    if let Some((version, suite)) = s.tls_info() {
        tracing::debug!(
            "{} - TLS handshake complete: TLS {version}, cipher suite {suite}",
            conn_label(conn)
        );
        let mut m = conn.meta.lock();
        m.tls_version = version;
        m.peer_cert = s.peer_cert().map(|c| Arc::from(c.as_ref()));
    }
}

/// What `verify_and_map` matches configured user names against, from a peer certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// SAN rfc822Name entries, in certificate order.
    pub emails: Vec<String>,
    /// SAN dNSName entries, in certificate order.
    pub dns_names: Vec<String>,
    /// The subject as an RFC 2253 string: last RDN first, `,` between RDNs, `+` inside one.
    pub subject: String,
}

impl CertIdentity {
    /// The candidate user names in nats-server's order: emails, DNS names, the subject.
    pub fn candidates(&self) -> impl Iterator<Item = &str> {
        self.emails
            .iter()
            .chain(&self.dns_names)
            .map(String::as_str)
            .chain(std::iter::once(self.subject.as_str()).filter(|s| !s.is_empty()))
    }
}

/// Reads the SAN emails, SAN DNS names and subject DN of a DER certificate (`None`: not a
/// certificate x509-parser can read).
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut id = CertIdentity::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::RFC822Name(e) => id.emails.push(e.to_string()),
                GeneralName::DNSName(d) => id.dns_names.push(d.to_string()),
                _ => {}
            }
        }
    }
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let value = match atv.as_str() {
                        Ok(v) => escape_dn_value(v),
                        // Not a string type: RFC 2253's `#` + hex of the value.
                        Err(_) => format!("#{}", hex(atv.attr_value().data)),
                    };
                    format!("{}={value}", dn_attr_name(&oid).unwrap_or(&oid))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    id.subject = rdns.into_iter().rev().collect::<Vec<_>>().join(",");
    Some(id)
}

/// RFC 2253/4514 short names of the usual subject attributes.
fn dn_attr_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.17" => "POSTALCODE",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        _ => return None,
    })
}

/// Backslash-escapes what RFC 2253 requires in an attribute value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts one failed handshake (`/varz` `tls_handshake_failures`).
pub fn count_failure(stats: &ServerStats) {
    stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names() {
        assert_eq!(
            normalize_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"),
            normalize_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
        );
        assert_eq!(
            normalize_suite("TLS13_AES_128_GCM_SHA256"),
            "TLS_AES_128_GCM_SHA256"
        );
        let t = TlsConfig {
            cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()],
            curve_preferences: vec!["CurveP256".into(), "X25519".into()],
            ..Default::default()
        };
        let p = provider(&t, "x").unwrap();
        // One TLS 1.2 suite plus the three TLS 1.3 ones; two groups, in order.
        assert_eq!(p.cipher_suites.len(), 4);
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::secp256r1);
        let bad = TlsConfig {
            cipher_suites: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
            ..Default::default()
        };
        let e = provider(&bad, "client TLS").unwrap_err().to_string();
        assert!(e.contains("TLS_RSA_WITH_AES_128_CBC_SHA"), "{e}");
        let bad = TlsConfig {
            curve_preferences: vec!["CurveP521".into()],
            ..Default::default()
        };
        assert!(provider(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("CurveP521"));
    }

    #[test]
    fn min_versions() {
        let t = |v: &str| TlsConfig {
            min_version: Some(v.into()),
            ..Default::default()
        };
        assert_eq!(versions(&t("1.3"), "x").unwrap().len(), 1);
        assert_eq!(versions(&t("1.2"), "x").unwrap().len(), 2);
        assert!(versions(&t("1.1"), "x").is_err());
    }

    #[test]
    fn der_walk_rejects_garbage() {
        assert!(spki_sha256(b"").is_none());
        assert!(spki_sha256(&[0x30, 0x82, 0xff]).is_none());
        assert!(spki_sha256(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }

    #[test]
    fn cert_identity_reads_sans_and_subject() {
        let mut p = rcgen::CertificateParams::new(vec!["host.example.com".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "alice@example.com".try_into().unwrap(),
        ));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "acme");
        dn.push(rcgen::DnType::OrganizationalUnitName, "eng");
        dn.push(rcgen::DnType::CommonName, "alice, jr");
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let id = cert_identity(cert.der()).unwrap();
        assert_eq!(id.emails, vec!["alice@example.com"]);
        assert_eq!(id.dns_names, vec!["host.example.com"]);
        assert_eq!(id.subject, "CN=alice\\, jr,OU=eng,O=acme");
        let c: Vec<&str> = id.candidates().collect();
        assert_eq!(
            c,
            vec![
                "alice@example.com",
                "host.example.com",
                "CN=alice\\, jr,OU=eng,O=acme"
            ]
        );
        assert!(cert_identity(b"not a certificate").is_none());
        assert_eq!(escape_dn_value(" a#+b "), "\\ a#\\+b\\ ");
    }

    #[tokio::test]
    async fn rewind_replays_prefix() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"rest").await.unwrap();
        drop(b);
        let mut r = Rewind::with_prefix(a, b"pre-".to_vec());
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "pre-rest");
    }
}
