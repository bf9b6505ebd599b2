//! nats-server's command line, with Go `flag` semantics: `-x` and `--x` are the same flag,
//! values come as `-x v` or `-x=v`, booleans as `-x` or `-x=false`. Flags override the file.

use std::collections::BTreeMap;

/// Whether a flag takes a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Bool,
    Value,
}

/// (aliases, canonical name, kind). The canonical name is the key in [`Flags::values`].
const TABLE: &[(&[&str], &str, Kind)] = &[
    (&["a", "addr", "net"], "addr", Kind::Value),
    (&["p", "port"], "port", Kind::Value),
    (&["n", "name", "server_name"], "name", Kind::Value),
    (&["P", "pid"], "pid", Kind::Value),
    (&["m", "http_port"], "http_port", Kind::Value),
    (&["ms", "https_port"], "https_port", Kind::Value),
    (&["c", "config"], "config", Kind::Value),
    (&["t"], "test_config", Kind::Bool),
    (&["sl", "signal"], "signal", Kind::Value),
    (&["client_advertise"], "client_advertise", Kind::Value),
    (&["ports_file_dir"], "ports_file_dir", Kind::Value),
    (&["l", "log"], "log", Kind::Value),
    (&["T", "logtime"], "logtime", Kind::Bool),
    (&["logtime_utc"], "logtime_utc", Kind::Bool),
    (&["s", "syslog"], "syslog", Kind::Bool),
    (&["r", "remote_syslog"], "remote_syslog", Kind::Value),
    (&["D", "debug"], "debug", Kind::Bool),
    (&["V", "trace"], "trace", Kind::Bool),
    (&["VV"], "trace_verbose", Kind::Bool),
    (&["DV"], "debug_trace", Kind::Bool),
    (&["DVV"], "debug_trace_verbose", Kind::Bool),
    (&["log_size_limit"], "log_size_limit", Kind::Value),
    (&["max_traced_msg_len"], "max_traced_msg_len", Kind::Value),
    (&["js", "jetstream"], "jetstream", Kind::Bool),
    (&["sd", "store_dir"], "store_dir", Kind::Value),
    (&["user"], "user", Kind::Value),
    (&["pass"], "pass", Kind::Value),
    (&["auth"], "auth", Kind::Value),
    (&["tls"], "tls", Kind::Bool),
    (&["tlscert"], "tlscert", Kind::Value),
    (&["tlskey"], "tlskey", Kind::Value),
    (&["tlsverify"], "tlsverify", Kind::Bool),
    (&["tlscacert"], "tlscacert", Kind::Value),
    (&["routes"], "routes", Kind::Value),
    (&["cluster", "cluster_listen"], "cluster", Kind::Value),
    (&["cluster_name"], "cluster_name", Kind::Value),
    (&["cluster_advertise"], "cluster_advertise", Kind::Value),
    (&["no_advertise"], "no_advertise", Kind::Bool),
    (&["connect_retries"], "connect_retries", Kind::Value),
    (&["profile"], "profile", Kind::Value),
    (&["h", "help"], "help", Kind::Bool),
    (&["v", "version"], "version", Kind::Bool),
    (&["help_tls"], "help_tls", Kind::Bool),
];

/// Parsed flags: canonical name → value ("true"/"false" for booleans), in the order given.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub values: BTreeMap<&'static str, String>,
    /// Positional arguments after the flags (nats-server ignores them; we refuse them).
    pub rest: Vec<String>,
}

impl Flags {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
    /// A boolean flag's value; `None` when absent.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| v == "true")
    }
}

fn lookup(name: &str) -> Option<(&'static str, Kind)> {
    TABLE
        .iter()
        .find(|(aliases, _, _)| aliases.contains(&name))
        .map(|(_, canon, kind)| (*canon, *kind))
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value \"{v}\" for flag -{flag}")),
    }
}

/// Parses argv (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            flags.rest.extend(it);
            break;
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            flags.rest.push(arg);
            flags.rest.extend(it);
            break;
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some((canon, kind)) = lookup(name) else {
            return Err(format!("flag provided but not defined: -{name}"));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => parse_bool(name, &v)?.to_string(),
            (Kind::Value, Some(v)) => v,
            (Kind::Value, None) => it
                .next()
                .ok_or_else(|| format!("flag needs an argument: -{name}"))?,
        };
        // The combined logging switches expand to their parts.
        match canon {
            "debug_trace" => {
                flags.values.insert("debug", value.clone());
                flags.values.insert("trace", value);
            }
            "debug_trace_verbose" => {
                flags.values.insert("debug", value.clone());
                flags.values.insert("trace", value.clone());
                flags.values.insert("trace_verbose", value);
            }
            "trace_verbose" => {
                flags.values.insert("trace", value.clone());
                flags.values.insert("trace_verbose", value);
            }
            _ => {
                flags.values.insert(canon, value);
            }
        }
    }
    Ok(flags)
}

pub const USAGE: &str = "\
Usage: canopy-server [options]

Server Options:
    -a, --addr, --net <host>         Bind to host address (default: 0.0.0.0)
    -p, --port <port>                Use port for clients (default: 4222, -1 for random)
    -n, --name
        --server_name <server_name>  Server name (default: auto)
    -P, --pid <file>                 File to store PID
    -m, --http_port <port>           Use port for http monitoring
    -ms,--https_port <port>          Use port for https monitoring
    -c, --config <file>              Configuration file
    -t                               Test configuration and exit
    -sl,--signal <signal>[=<pid>]    Send signal to canopy-server process (ldm, stop, quit, term, reopen, reload)
        --client_advertise <string>  Client URL to advertise to other servers
        --ports_file_dir <dir>       Creates a ports file in the specified directory (<executable_name>_<pid>.ports).

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
    -s, --syslog                     Log to syslog or windows event log
    -r, --remote_syslog <addr>       Syslog server addr (udp://localhost:514)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -VV                              Verbose trace (traces system account as well)
    -DV                              Debug and trace
    -DVV                             Debug and verbose trace (traces system account as well)
        --log_size_limit <limit>     Logfile size limit (default: auto)
        --max_traced_msg_len <len>   Maximum printable length for traced messages (default: unlimited)

JetStream Options:
    -js, --jetstream                 Enable JetStream functionality
    -sd, --store_dir <dir>           Set the storage directory

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

TLS Options:
        --tls                        Enable TLS, do not verify clients (default: false)
        --tlscert <file>             Server certificate file
        --tlskey <file>              Private key for server certificate
        --tlsverify                  Enable TLS, verify client certificates
        --tlscacert <file>           Client certificate CA for verification

Cluster Options:
        --routes <rurl-1, rurl-2>    Routes to solicit and connect
        --cluster <cluster-url>      Cluster URL for solicited routes
        --cluster_name <string>      Cluster Name, if not set one will be dynamically generated
        --no_advertise <bool>        Do not advertise known cluster information to clients
        --cluster_advertise <string> Cluster URL to advertise to other servers
        --connect_retries <number>   For implicit routes, number of connect retries
        --cluster_listen <url>       Cluster url from which members can solicit routes

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version
        --help_tls                   TLS help
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_style_forms() {
        let f = p(&[
            "-p",
            "4333",
            "--addr=127.0.0.1",
            "-js",
            "-sd=/tmp/x",
            "-T=false",
        ])
        .unwrap();
        assert_eq!(f.get("port"), Some("4333"));
        assert_eq!(f.get("addr"), Some("127.0.0.1"));
        assert_eq!(f.bool("jetstream"), Some(true));
        assert_eq!(f.get("store_dir"), Some("/tmp/x"));
        assert_eq!(f.bool("logtime"), Some(false));
    }

    #[test]
    fn combined_log_flags_and_errors() {
        let f = p(&["-DV"]).unwrap();
        assert_eq!(f.bool("debug"), Some(true));
        assert_eq!(f.bool("trace"), Some(true));
        assert!(p(&["-nope"]).unwrap_err().contains("not defined: -nope"));
        assert!(p(&["-p"]).unwrap_err().contains("needs an argument"));
        assert!(p(&["-D=maybe"]).is_err());
        let f = p(&["-p", "-1", "--", "x"]).unwrap();
        assert_eq!(f.get("port"), Some("-1"));
        assert_eq!(f.rest, vec!["x".to_string()]);
    }
}
