//! Connection flags shared by every command (`-s`, `--user`, `--password`, `--token`,
//! `--creds`) and their two uses: async-nats `ConnectOptions`, and the CONNECT JSON and
//! socket address for the raw-protocol bench clients.

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Global connection flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Server URL(s), comma separated.
    #[arg(
        short = 's',
        long = "server",
        global = true,
        help_heading = "Connection",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub server: String,
    /// User name.
    #[arg(long, global = true, help_heading = "Connection")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, global = true, help_heading = "Connection")]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long, global = true, help_heading = "Connection")]
    pub token: Option<String>,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long, global = true, help_heading = "Connection")]
    pub creds: Option<PathBuf>,
}

impl ConnArgs {
    /// async-nats options carrying the configured authentication.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions> {
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(Some(3));
        if let Some(path) = &self.creds {
            opts = opts
                .credentials_file(path)
                .await
                .with_context(|| format!("reading credentials file {}", path.display()))?;
        }
        match (&self.user, &self.password) {
            (Some(u), p) => opts = opts.user_and_password(u.clone(), p.clone().unwrap_or_default()),
            (None, Some(_)) => bail!("--password needs --user"),
            (None, None) => {
                // `nats://user:pass@host` (or `nats://token@host`) in the server URL.
                if let Ok((_, Some(u), pass)) = self.first_url() {
                    opts = match pass {
                        Some(p) => opts.user_and_password(u, p),
                        None => opts.token(u),
                    };
                }
            }
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        Ok(opts)
    }

    /// Connect with the given connection name.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client> {
        self.connect_with(name, |o| o).await
    }

    /// Connect after letting the caller tune the options (capacities, etc.).
    pub async fn connect_with(
        &self,
        name: &str,
        tune: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
    ) -> Result<async_nats::Client> {
        let opts = tune(self.options().await?.name(name));
        opts.connect(self.server.as_str())
            .await
            .with_context(|| format!("connecting to {}", self.server))
    }

    /// `host:port` of the first URL, for raw TCP clients.
    pub fn socket_addr(&self) -> Result<String> {
        Ok(self.first_url()?.0)
    }

    /// The CONNECT JSON a raw client sends, with auth from flags or URL user info.
    pub fn connect_json(&self, name: &str) -> Result<String> {
        if self.creds.is_some() {
            bail!("--raw clients do not support --creds (no nonce signing); use user/password or token");
        }
        let (_, url_user, url_pass) = self.first_url()?;
        let mut obj = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": name,
            "lang": "canopy-raw",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": true,
            "headers": false,
            "no_responders": false,
        });
        let user = self.user.clone().or(url_user);
        let pass = self.password.clone().or(url_pass);
        if let Some(u) = user {
            // A bare user info without ':' is a token in NATS URLs.
            match pass {
                Some(p) => {
                    obj["user"] = u.into();
                    obj["pass"] = p.into();
                }
                None if self.user.is_none() => obj["auth_token"] = u.into(),
                None => obj["user"] = u.into(),
            }
        }
        if let Some(t) = &self.token {
            obj["auth_token"] = t.clone().into();
        }
        Ok(obj.to_string())
    }

    /// Split the first URL into (host:port, user, password).
    fn first_url(&self) -> Result<(String, Option<String>, Option<String>)> {
        parse_url(self.server.split(',').next().unwrap_or_default())
    }
}

/// Parse `[nats://][user[:pass]@]host[:port]` into (host:port, user, pass).
fn parse_url(url: &str) -> Result<(String, Option<String>, Option<String>)> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some(("nats" | "tcp", rest)) => rest,
        Some((scheme, _)) => bail!("unsupported URL scheme {scheme:?} for raw clients in {url:?}"),
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if hostport.is_empty() {
        return Err(anyhow!("no host in server URL {url:?}"));
    }
    // Bracketed IPv6 keeps its colons; otherwise a colon introduces the port.
    let has_port = match hostport.rfind(']') {
        Some(i) => hostport[i..].contains(':'),
        None => hostport.contains(':'),
    };
    let addr = if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:4222")
    };
    let (user, pass) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    Ok((addr, user, pass))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("nats://127.0.0.1:1234").unwrap().0,
            "127.0.0.1:1234"
        );
        assert_eq!(parse_url("localhost").unwrap().0, "localhost:4222");
        let (a, u, p) = parse_url("nats://bob:s3cret@h:5").unwrap();
        assert_eq!(
            (a.as_str(), u.as_deref(), p.as_deref()),
            ("h:5", Some("bob"), Some("s3cret"))
        );
        assert_eq!(parse_url("nats://[::1]").unwrap().0, "[::1]:4222");
        assert_eq!(parse_url("nats://[::1]:7").unwrap().0, "[::1]:7");
        assert!(parse_url("ws://h:1").is_err());
    }
}
