//! The files in deploy/, checked without building an image or installing anything: the
//! Containerfile against what deploy/build-image.sh stages, the Helm values files against
//! the official chart's current key layout (the seed's old layout is silently ignored by
//! the chart), and the systemd units' command lines against the real binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use canopy_testkit::canopy_bin;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// The instruction lines of a Containerfile whose keyword is `kw`, arguments only.
fn instructions<'a>(file: &'a str, kw: &str) -> Vec<&'a str> {
    file.lines()
        .filter_map(|l| l.trim().strip_prefix(kw))
        .filter(|rest| rest.starts_with(' '))
        .map(str::trim)
        .collect()
}

#[test]
fn containerfile_matches_the_staged_tree() {
    let cf = read("Containerfile");
    let script = read("build-image.sh");
    // No registry: an empty base, and only the staged tree copied in.
    assert_eq!(instructions(&cf, "FROM"), vec!["scratch"]);
    for src in instructions(&cf, "COPY") {
        let dir = src.split_whitespace().rev().nth(1).unwrap();
        assert!(
            script.contains(&format!("$img/{}", dir.trim_end_matches('/'))),
            "COPY {dir} is not staged by build-image.sh"
        );
    }
    assert_eq!(
        instructions(&cf, "ENTRYPOINT"),
        vec!["[\"/usr/local/bin/canopy-server\"]"]
    );
    assert!(script.contains("\"$img/rootfs/usr/local/bin/\""));
    // The chart's pre-stop hook and scripts call `nats-server`.
    assert!(script.contains("ln -s canopy-server \"$img/rootfs/usr/local/bin/nats-server\""));
    assert!(instructions(&cf, "ENV").contains(&"PATH=/usr/local/bin"));
    // Not root; the nats image's ports, plus leafnodes.
    let user = instructions(&cf, "USER");
    assert_eq!(user, vec!["1000:1000"]);
    assert!(script.contains("nats:x:1000:1000:"));
    let exposed: Vec<&str> = instructions(&cf, "EXPOSE")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect();
    for p in ["4222", "6222", "7422", "8222"] {
        assert!(exposed.contains(&p), "port {p} not exposed");
    }
    // CMD's config is the staged default config, and it is valid.
    assert_eq!(
        instructions(&cf, "CMD"),
        vec!["[\"--config\", \"/etc/nats/nats-server.conf\"]"]
    );
    assert!(script.contains("deploy/nats-server.conf \"$img/rootfs/etc/nats/nats-server.conf\""));
    let out = Command::new(canopy_bin())
        .args(["-t", "-c"])
        .arg(deploy("nats-server.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Top-level keys of the chart's values.yaml (2.14.2) and the keys under `config`.
const CHART_KEYS: &[&str] = &[
    "global",
    "nameOverride",
    "fullnameOverride",
    "namespaceOverride",
    "tlsCA",
    "config",
    "container",
    "reloader",
    "promExporter",
    "service",
    "statefulSet",
    "podTemplate",
    "headlessService",
    "configMap",
    "podDisruptionBudget",
    "serviceAccount",
    "natsBox",
    "extraResources",
];
const CHART_CONFIG_KEYS: &[&str] = &[
    "cluster",
    "jetstream",
    "nats",
    "leafnodes",
    "websocket",
    "mqtt",
    "gateway",
    "monitor",
    "profiling",
    "resolver",
    "serverNamePrefix",
    "merge",
    "patch",
];

/// The mapping keys at one indentation (`indent` spaces) of a YAML file, optionally only
/// inside the top-level block `under`.
fn keys_at(yaml: &str, indent: usize, under: Option<&str>) -> Vec<String> {
    let mut inside = under.is_none();
    let mut out = Vec::new();
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        if lead == 0 {
            if let Some(u) = under {
                inside = line.starts_with(&format!("{u}:"));
            }
        }
        if inside && lead == indent && !line.trim_start().starts_with('-') {
            if let Some((k, _)) = line.trim().split_once(':') {
                out.push(k.to_string());
            }
        }
    }
    out
}

#[test]
fn helm_values_use_the_current_chart_layout() {
    for name in ["helm/hub-values.yaml", "helm/leaf-values.yaml"] {
        let v = read(name);
        let top = keys_at(&v, 0, None);
        for k in &top {
            assert!(
                CHART_KEYS.contains(&k.as_str()),
                "{name}: top-level key {k:?} is not the chart's (old layout?)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for k in &top {
            assert!(seen.insert(k), "{name}: {k:?} twice");
        }
        for k in keys_at(&v, 2, Some("config")) {
            assert!(
                CHART_CONFIG_KEYS.contains(&k.as_str()),
                "{name}: config.{k} is not a chart key"
            );
        }
        assert!(v.contains("repository: localhost/canopy-server"));
    }
    // What tests/chart.rs renders comes from these values.
    let hub = read("helm/hub-values.yaml");
    for want in [
        "replicas: 3",
        "name: hub-cluster",
        "maxSize: 2Gi",
        "size: 10Gi",
        "domain: hub",
        "port: 7422",
        "type: full",
        "$include: ../nats-accounts/resolver.conf",
        "name: nats-hub-leafnodes",
    ] {
        assert!(hub.contains(want), "hub-values.yaml lacks {want:?}");
    }
    let leaf = read("helm/leaf-values.yaml");
    for want in [
        "maxSize: 512Mi",
        "size: 5Gi",
        "domain: leaf",
        "url: nats-leaf://nats-hub-leafnodes.nats-hub.svc.cluster.local:7422",
        "credentials: /etc/nats-creds/leaf/leaf.creds",
        "mountPath: /etc/nats-creds/leaf",
        "path: leaf.creds",
    ] {
        assert!(leaf.contains(want), "leaf-values.yaml lacks {want:?}");
    }
}

#[test]
fn systemd_units_run_the_server_as_documented() {
    for name in ["systemd/canopy-server.service", "systemd/nats-leaf.service"] {
        let unit = read(name);
        let get = |key: &str| -> Vec<&str> {
            unit.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .collect()
        };
        assert_eq!(get("Type"), vec!["simple"], "{name}");
        assert_eq!(get("ExecReload"), vec!["/bin/kill -HUP $MAINPID"], "{name}");
        // Stop = lame duck; the timeout covers grace (10s) + duration (2m) by default.
        assert_eq!(get("KillSignal"), vec!["SIGUSR2"], "{name}");
        assert_eq!(get("TimeoutStopSec"), vec!["150s"], "{name}");
        assert!(!get("LimitNOFILE").is_empty(), "{name}");
        assert_eq!(get("User"), vec!["nats"], "{name}");
        // The command line's flags are the server's: run it with -t on the image's
        // default config in place of the unit's.
        let exec = get("ExecStart");
        let mut args: Vec<&str> = exec[0].split_whitespace().collect();
        assert_eq!(args.remove(0), "/usr/local/bin/canopy-server", "{name}");
        let conf = deploy("nats-server.conf");
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("/etc/nats/") {
                    conf.display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let out = Command::new(canopy_bin())
            .args(&args)
            .arg("-t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sysusers = read("systemd/canopy.sysusers.conf");
    assert!(sysusers.lines().any(|l| l.starts_with("u nats ")));
}

/// `systemd-analyze verify` accepts both units (skipped where systemd-analyze is missing),
/// with ExecStart pointed at this build's binary since nothing is installed here.
#[test]
fn systemd_analyze_verifies_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["canopy-server.service", "nats-leaf.service"] {
        let unit = read(&format!("systemd/{name}")).replace(
            "/usr/local/bin/canopy-server",
            &canopy_bin().display().to_string(),
        );
        let p = dir.path().join(name);
        std::fs::write(&p, unit).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image scripts at least parse (they are run by hand, not in CI).
#[test]
fn image_scripts_parse() {
    for name in ["build-image.sh", "check-image.sh"] {
        let st = Command::new("bash")
            .arg("-n")
            .arg(deploy(name))
            .status()
            .unwrap();
        assert!(st.success(), "{name}");
    }
}

/// Under systemd (stderr is the journal stream `JOURNAL_STREAM` names), each log line
/// starts with its syslog priority so `journalctl -u nats-leaf -p err` filters; the
/// units' `-T=false` drops the server's own timestamp, journald has one.
#[test]
fn journald_stream_gets_priority_prefixes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("leaf.conf");
    std::fs::write(
        &conf,
        "listen: 127.0.0.1:-1\nleafnodes { remotes: [ { url: \"nats-leaf://127.0.0.1:1\" } ] }\n",
    )
    .unwrap();
    let log = dir.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut child = Command::new(canopy_bin())
        .args(["-c", conf.to_str().unwrap(), "-T=false"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    canopy_testkit::assert_eventually!(
        std::time::Duration::from_secs(10),
        text().contains("Server is ready") && text().contains("[ERR]"),
        "{}",
        text()
    );
    let _ = child.kill();
    let _ = child.wait();
    let pid = child.id();
    let t = text();
    assert!(
        t.contains(&format!("<6>[{pid}] [INF] Server is ready\n")),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "<3>[{pid}] [ERR] Error trying to connect as leafnode"
        )),
        "{t}"
    );
    // Every line carries a priority (the default stream keeps nats-server's plain lines).
    assert!(t.lines().all(|l| l.starts_with('<')), "{t}");
}
