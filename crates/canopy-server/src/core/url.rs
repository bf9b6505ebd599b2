//! The one parser for the URLs servers dial: leaf remotes (`nats-leaf://`, `nats://`,
//! `tls://`, `leaf://`, and `ws://`/`wss://` through a websocket port) and cluster routes (`nats-route://`, `nats://`, `tls://`), built
//! on the `url` crate. A URL without a scheme takes the caller's default; user and
//! password are percent-decoded; IPv6 hosts are written in brackets.

use percent_encoding::percent_decode_str;

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The scheme, lowercase.
    pub scheme: String,
    /// The host without brackets (`::1` for `[::1]`).
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// The path (`/` when there is none); a websocket leaf remote's upgrade path starts
    /// with it.
    pub path: String,
}

impl ServerUrl {
    /// Parses `raw`. `schemes` are the accepted schemes (the first is assumed when the
    /// URL has none); `default_port` fills in a missing port, or a missing port is an
    /// error when it is `None`.
    pub fn parse(
        raw: &str,
        schemes: &[&str],
        default_port: Option<u16>,
    ) -> Result<ServerUrl, String> {
        let trimmed = raw.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("{}://{trimmed}", schemes.first().copied().unwrap_or("nats"))
        };
        let u = url::Url::parse(&with_scheme).map_err(|e| format!("invalid URL {raw:?}: {e}"))?;
        let scheme = u.scheme().to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!("unsupported URL scheme \"{scheme}\" in {raw:?}"));
        }
        let host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            _ => return Err(format!("missing host in {raw:?}")),
        };
        // `port_or_known_default`: `ws://h:80` has no explicit port for the `url` crate.
        let port = match (u.port_or_known_default(), default_port) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => return Err(format!("URL {raw:?} has no port")),
        };
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = (!u.username().is_empty()).then(|| decode(u.username()));
        let pass = u.password().map(decode);
        Ok(ServerUrl {
            scheme,
            host,
            port,
            user,
            pass,
            path: u.path().to_string(),
        })
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn hostport(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &[&str] = &["nats-leaf", "nats", "tls", "leaf"];

    #[test]
    fn parses_the_forms_servers_use() {
        let u = ServerUrl::parse("nats-leaf://a:b@hub-1:7433", LEAF, Some(7422)).unwrap();
        assert_eq!(u.host, "hub-1");
        assert_eq!(u.port, 7433);
        assert_eq!(u.user.as_deref(), Some("a"));
        assert_eq!(u.pass.as_deref(), Some("b"));
        assert_eq!(
            ServerUrl::parse("hub:1", LEAF, None).unwrap().scheme,
            "nats-leaf"
        );
        assert_eq!(
            ServerUrl::parse("nats://h", LEAF, Some(7422)).unwrap().port,
            7422
        );
        assert_eq!(
            ServerUrl::parse("tls://[::1]:1", LEAF, None)
                .unwrap()
                .hostport(),
            "[::1]:1"
        );
        let p = ServerUrl::parse("nats://u:p%40ss@h:1/", LEAF, None).unwrap();
        assert_eq!(p.pass.as_deref(), Some("p@ss"));
        let ws = &["ws", "wss"];
        assert_eq!(
            ServerUrl::parse("ws://h:80", ws, Some(7422)).unwrap().port,
            80
        );
        assert_eq!(
            ServerUrl::parse("wss://h", ws, Some(7422)).unwrap().port,
            443
        );
        assert_eq!(
            ServerUrl::parse("ws://h:1/a/b", ws, None).unwrap().path,
            "/a/b"
        );
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        assert!(ServerUrl::parse("http://h:1", LEAF, None).is_err());
        assert!(ServerUrl::parse("nats-leaf://:1", LEAF, None).is_err());
        assert!(ServerUrl::parse("nats://h", LEAF, None).is_err());
        assert!(ServerUrl::parse("nats://h:99999", LEAF, None).is_err());
        assert!(ServerUrl::parse("nats://h:x", LEAF, None).is_err());
    }
}
