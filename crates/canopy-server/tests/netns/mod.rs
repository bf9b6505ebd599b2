//! Network namespaces for partition tests (shared by partitions.rs and
//! js_cluster_faults.rs): a bridge namespace, one namespace per server with a veth into
//! the bridge and the address `<net>.<i+1>`, optionally a veth from the test's own (root)
//! namespace into the bridge at `<net>.254` so the test reaches every server whatever is
//! cut between them. Links between servers are cut with blackhole routes inside their
//! namespaces (one route = one direction of one pair). Everything is removed on drop.
//!
//! Needs root and `ip` (iproute2); [`Lab::new`] says why it cannot when it cannot.

#![allow(dead_code)]

use std::process::Command;

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Is this process root (network namespaces need it)?
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    uid == 0
}

/// The namespaces and links a test made; removed on drop (deleting a namespace deletes
/// its veth ends, and their peers with them).
pub struct Lab {
    prefix: String,
    net: String,
    names: Vec<String>,
}

impl Lab {
    /// Namespaces `<tag><pid>-<i>` for `n` servers on `<net>.0/24` (a subnet no other
    /// test uses: tests run in parallel), and with `from_root` the root namespace's link.
    pub fn new(tag: &str, net: &str, n: usize, from_root: bool) -> Result<Lab, String> {
        let prefix = format!("{tag}{}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix: prefix.clone(),
            net: net.to_string(),
            names: Vec::new(),
        };
        let br = format!("{prefix}-br");
        ip(&["netns", "add", &br])?;
        lab.names.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        // A veth pair `a`–`b`: `b` into the bridge, `a` into `ns` (None: stays here).
        let plug = |ns: Option<&str>, a: &str, b: &str, addr: &str| -> Result<(), String> {
            ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
            ip(&["link", "set", b, "netns", &br])?;
            ip(&["-n", &br, "link", "set", b, "master", "br0", "up"])?;
            match ns {
                Some(ns) => {
                    ip(&["link", "set", a, "netns", ns])?;
                    ip(&["-n", ns, "addr", "add", addr, "dev", a])?;
                    ip(&["-n", ns, "link", "set", a, "up"])?;
                    ip(&["-n", ns, "link", "set", "lo", "up"])
                }
                None => {
                    ip(&["addr", "add", addr, "dev", a])?;
                    ip(&["link", "set", a, "up"])
                }
            }
        };
        for i in 0..n {
            let ns = format!("{prefix}-{i}");
            ip(&["netns", "add", &ns])?;
            lab.names.push(ns.clone());
            let addr = format!("{net}.{}/24", i + 1);
            plug(
                Some(&ns),
                &format!("{prefix}a{i}"),
                &format!("{prefix}b{i}"),
                &addr,
            )?;
        }
        if from_root {
            let addr = format!("{net}.254/24");
            plug(None, &format!("{prefix}ra"), &format!("{prefix}rb"), &addr)?;
        }
        Ok(lab)
    }

    /// Server `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Server `i`'s address.
    pub fn host(&self, i: usize) -> String {
        format!("{}.{}", self.net, i + 1)
    }

    /// Cuts (or heals) both directions between servers `a` and `b`.
    pub fn cut(&self, a: usize, b: usize, on: bool) {
        let verb = if on { "add" } else { "del" };
        for (x, y) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.host(y));
            if let Err(e) = ip(&["-n", &self.ns(x), "route", verb, "blackhole", &to]) {
                panic!("{e}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = ip(&["netns", "del", n]);
        }
    }
}
