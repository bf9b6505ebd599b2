//! Binding listeners as nats-server (Go's `net.Listen`) does: a wildcard host (`0.0.0.0`,
//! `::` or empty) listens dual-stack, so IPv4 and IPv6 clients (`[::1]`) both connect;
//! failures read like Go's (`listen tcp 0.0.0.0:4222: bind: address already in use`),
//! because tools and people match those words.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpListener;

/// A bound listener and the address to report: the configured host with the port the
/// kernel gave (so logs and ports files say `0.0.0.0:P` as nats-server's do, not `[::]:P`).
pub struct Bound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// `host:port` as Go's `net.JoinHostPort` writes it (`[::1]:4222` for IPv6).
pub fn join_host_port(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's text for an OS error: the strerror text, lower case, without Rust's
/// ` (os error N)` suffix.
fn go_errno_text(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn listen_on(
    addr: SocketAddr,
    dual_stack: bool,
) -> Result<std::net::TcpListener, (&'static str, io::Error)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ("socket", e))?;
    if dual_stack {
        sock.set_only_v6(false).map_err(|e| ("setsockopt", e))?;
    }
    // As Go and tokio do on Unix: a restarted server can bind while old connections
    // linger in TIME_WAIT.
    sock.set_reuse_address(true)
        .map_err(|e| ("setsockopt", e))?;
    sock.set_nonblocking(true).map_err(|e| ("setsockopt", e))?;
    sock.bind(&SockAddr::from(addr)).map_err(|e| ("bind", e))?;
    sock.listen(listen_backlog()).map_err(|e| ("listen", e))?;
    Ok(sock.into())
}

/// The accept backlog: the kernel's `somaxconn`, as nats-server (Go) listens with. Tokio's
/// default (128) drops connections of a storm (NATS servers speak first, so a client
/// whose handshake was dropped from a full accept queue waits for INFO); the kernel caps
/// whatever we ask at `somaxconn` anyway.
pub fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .map_or(4096, |n| n.min(65535))
}

/// Binds `host:port` (`port` < 0 picks a free port). The error is Go's
/// `listen tcp H:P: bind: <reason>`.
pub async fn bind(host: &str, port: i32) -> Result<Bound, String> {
    let port = if port < 0 {
        0
    } else {
        port.min(u16::MAX as i32) as u16
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let hp = join_host_port(bare, port);
    let ip: IpAddr = if bare.is_empty() {
        IpAddr::from([0, 0, 0, 0])
    } else if let Ok(ip) = bare.parse() {
        ip
    } else {
        match tokio::net::lookup_host((bare, port)).await {
            Ok(mut addrs) => {
                let all: Vec<SocketAddr> = addrs.by_ref().collect();
                // Go prefers an IPv4 address for a name.
                match all.iter().find(|a| a.is_ipv4()).or(all.first()) {
                    Some(a) => a.ip(),
                    None => return Err(format!("listen tcp: lookup {bare}: no such host")),
                }
            }
            Err(e) => return Err(format!("listen tcp: lookup {bare}: {}", go_errno_text(&e))),
        }
    };
    let wanted = SocketAddr::new(ip, port);
    let std_listener = if ip.is_unspecified() {
        // Dual stack on `[::]`, falling back to the configured family where the host
        // has no IPv6.
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        match listen_on(v6, true) {
            Ok(l) => Ok(l),
            Err((_, e)) if e.kind() == io::ErrorKind::AddrInUse => Err(("bind", e)),
            Err(_) => listen_on(wanted, false),
        }
    } else {
        listen_on(wanted, false)
    };
    let std_listener =
        std_listener.map_err(|(op, e)| format!("listen tcp {hp}: {op}: {}", go_errno_text(&e)))?;
    let actual = std_listener
        .local_addr()
        .map_err(|e| format!("listen tcp {hp}: {}", go_errno_text(&e)))?;
    let listener = TcpListener::from_std(std_listener)
        .map_err(|e| format!("listen tcp {hp}: {}", go_errno_text(&e)))?;
    Ok(Bound {
        listener,
        addr: SocketAddr::new(ip, actual.port()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_errno_text_as_go_writes_them() {
        assert_eq!(join_host_port("::1", 4222), "[::1]:4222");
        assert_eq!(join_host_port("[::]", 1), "[::]:1");
        assert_eq!(join_host_port("0.0.0.0", 4222), "0.0.0.0:4222");
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(go_errno_text(&e), "address already in use");
    }

    #[tokio::test]
    async fn wildcard_listens_on_both_families() {
        let Ok(b) = bind("0.0.0.0", -1).await else {
            panic!("bind failed");
        };
        assert!(b.addr.ip().is_unspecified() && b.addr.is_ipv4());
        let port = b.addr.port();
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok());
        // Hosts without IPv6 (some containers) fall back to IPv4 only.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            assert!(tokio::net::TcpStream::connect(("::1", port)).await.is_ok());
        }
        let busy = bind("0.0.0.0", port as i32).await.err().unwrap_or_default();
        assert_eq!(
            busy,
            format!("listen tcp 0.0.0.0:{port}: bind: address already in use")
        );
    }
}
