//! `canopy topology check|graph`: one small config set per finding (each reported with
//! both ends' file:line), the seed's own deployments (no errors), and the graph formats
//! (the DOT output renders with Graphviz when `dot` is installed).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const CANOPY: &str = env!("CARGO_BIN_EXE_canopy");

fn canopy(args: &[&str]) -> Output {
    Command::new(CANOPY).args(args).output().unwrap()
}

/// Writes `files` (name, text) into a fresh directory.
fn deployment(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `check --format json` on a directory: (exit code, findings).
fn check(dir: &Path) -> (i32, Vec<Value>) {
    let out = canopy(&[
        "topology",
        "check",
        "--format",
        "json",
        dir.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (
        out.status.code().unwrap_or(-1),
        v.as_array().unwrap().clone(),
    )
}

/// The finding whose message contains `text`; asserts its severity and that it points at
/// each of `files` (file:line).
fn expect(findings: &[Value], text: &str, severity: &str, files: &[&str]) {
    let f = findings
        .iter()
        .find(|f| f["message"].as_str().unwrap().contains(text))
        .unwrap_or_else(|| panic!("no finding with {text:?} in {findings:#?}"));
    assert_eq!(f["severity"], severity, "{f}");
    let at: Vec<&str> = f["at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for file in files {
        assert!(
            at.iter().any(|a| a.contains(file)
                && a.split(':')
                    .nth(1)
                    .is_some_and(|l| l.parse::<u32>().is_ok_and(|n| n > 0))),
            "{text:?} does not point at a line of {file}: {at:?}"
        );
    }
    assert!(!f["fix"].as_str().unwrap().is_empty());
}

const HUB: &str = r#"server_name: hub
listen: 127.0.0.1:4222
accounts {
  APP: { users: [ { user: app, password: app } ] }
}
leafnodes {
  port: 17422
  authorization {
    users: [
      { user: good, password: right, account: APP }
      { user: lost, password: right, account: NOWHERE }
    ]
  }
}
"#;

#[test]
fn leaf_credentials_and_accounts() {
    let d = deployment(&[
        ("hub.conf", HUB),
        (
            "wrongpass.conf",
            "server_name: wp\nleafnodes { remotes: [ { url: \"nats-leaf://good:wrong@hub:17422\" } ] }\n",
        ),
        (
            "nouser.conf",
            "server_name: nu\nleafnodes { remotes: [ { url: \"nats-leaf://stranger:x@hub:17422\" } ] }\n",
        ),
        (
            "anon.conf",
            "server_name: an\nleafnodes { remotes: [ { url: \"nats-leaf://hub:17422\" } ] }\n",
        ),
        (
            "lost.conf",
            "server_name: lo\nleafnodes { remotes: [ { url: \"nats-leaf://lost:right@hub:17422\" } ] }\n",
        ),
        (
            "local.conf",
            "server_name: lc\naccounts { A: { users: [ { user: a, password: a } ] } }\n\
             leafnodes { remotes: [ { url: \"nats-leaf://good:right@hub:17422\", account: MISSING } ] }\n",
        ),
    ]);
    let (code, f) = check(d.path());
    assert_eq!(code, 1, "errors exit with 1");
    expect(
        &f,
        "is not the hub's",
        "error",
        &["wrongpass.conf", "hub.conf"],
    );
    expect(
        &f,
        "has no leaf user \"stranger\"",
        "error",
        &["nouser.conf", "hub.conf"],
    );
    expect(
        &f,
        "requires credentials",
        "error",
        &["anon.conf", "hub.conf"],
    );
    expect(
        &f,
        "account \"NOWHERE\", which the hub does not define",
        "error",
        &["lost.conf", "hub.conf"],
    );
    expect(&f, "local account \"MISSING\"", "error", &["local.conf"]);
}

#[test]
fn tls_on_one_side_only() {
    let d = deployment(&[
        ("hub.conf", "server_name: hub\nleafnodes { port: 17422 }\n"),
        (
            "leaf.conf",
            "server_name: leaf\nleafnodes { remotes: [ { url: \"tls://hub:17422\" } ] }\n",
        ),
    ]);
    let (code, f) = check(d.path());
    assert_eq!(code, 1);
    expect(
        &f,
        "the hub's leafnode port has none",
        "error",
        &["leaf.conf", "hub.conf"],
    );
}

#[test]
fn jetstream_domains_and_store_dirs() {
    let d = deployment(&[
        (
            "hub.conf",
            "server_name: hub\njetstream { store_dir: \"/data/js\", domain: hub }\nleafnodes { port: 17422 }\n",
        ),
        (
            "edge.conf",
            "server_name: edge\njetstream { store_dir: \"/data/js\" }\n\
             leafnodes { remotes: [ { url: \"nats-leaf://hub:17422\" } ] }\n",
        ),
    ]);
    let (code, f) = check(d.path());
    assert_eq!(code, 1);
    expect(
        &f,
        "without a domain under a hub with domain \"hub\"",
        "warning",
        &["edge.conf", "hub.conf"],
    );
    expect(
        &f,
        "store_dir /data/js is shared",
        "error",
        &["edge.conf", "hub.conf"],
    );
}

#[test]
fn replies_denied_names_clusters_and_loops() {
    let d = deployment(&[
        (
            "a.conf",
            "server_name: a\ncluster { name: one, port: 16221, routes: [\"nats-route://b:16222\", \"nats-route://ghost:1\"] }\n\
             leafnodes { port: 17421, remotes: [ { url: \"nats-leaf://c:17423\", deny_imports: [\">\"] } ] }\n",
        ),
        (
            "b.conf",
            "server_name: b\ncluster { name: two, port: 16222 }\n\
             leafnodes { port: 17422, remotes: [ { url: \"nats-leaf://a:17421\" } ] }\n",
        ),
        (
            "c.conf",
            "server_name: c\nleafnodes { port: 17423, remotes: [ { url: \"nats-leaf://b:17422\" } ] }\n",
        ),
        ("dup.conf", "server_name: c\n"),
    ]);
    let (code, f) = check(d.path());
    assert_eq!(code, 1);
    expect(&f, "also blocks reply subjects", "warning", &["a.conf"]);
    expect(
        &f,
        "routes to b (cluster \"two\")",
        "error",
        &["a.conf", "b.conf"],
    );
    expect(
        &f,
        "route nats-route://ghost:1 matches no config",
        "warning",
        &["a.conf"],
    );
    expect(&f, "server_name \"c\" is used by 2 configs", "error", &[]);
    expect(
        &f,
        "leaf loop a → c → b → a",
        "warning",
        &["a.conf", "b.conf", "c.conf"],
    );
}

fn seed(names: &[&str]) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    names
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect()
}

/// The seed's deployments (hostnames replaced by 127.0.0.1, so each set is one deployment)
/// have no errors.
#[test]
fn the_seed_deployments_are_clean() {
    for set in [
        &[
            "hub-cluster-1.conf",
            "hub-cluster-2.conf",
            "hub-cluster-3.conf",
            "hub-cluster-leaf.conf",
        ][..],
        &["hub-secure.conf", "leaf-secure.conf"],
        &[
            "hub-server.conf",
            "leaf-server.conf",
            "edge-leaf.conf",
            "resilient-leaf.conf",
            "high-performance-leaf.conf",
            "leaf-compression.conf",
            "leaf-with-remapping.conf",
        ],
        &["us-regional-hub.conf", "leaf-server.conf"],
    ] {
        let files = seed(set);
        let mut args = vec!["topology", "check"];
        args.extend(files.iter().map(String::as_str));
        let out = canopy(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{set:?}:\n{text}");
        assert!(text.contains(" 0 errors"), "{text}");
    }
}

#[test]
fn graph_formats() {
    let files = seed(&[
        "hub-cluster-1.conf",
        "hub-cluster-2.conf",
        "hub-cluster-3.conf",
        "hub-cluster-leaf.conf",
    ]);
    let mut args = vec!["topology", "graph", "--format"];
    let run = |fmt: &str| {
        let mut a = args.clone();
        a.push(fmt);
        a.extend(files.iter().map(String::as_str));
        let out = canopy(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let m = run("mermaid");
    assert!(m.starts_with("graph LR"), "{m}");
    assert!(
        m.contains("hub-server-2") && m.contains("|route|") && m.contains("-->"),
        "{m}"
    );
    let j: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(j["servers"].as_array().unwrap().len(), 4);
    assert_eq!(j["leafs"].as_array().unwrap().len(), 3);
    let dot = run("dot");
    assert!(dot.starts_with("digraph"), "{dot}");
    args.clear();
    if Command::new("dot").arg("-V").output().is_ok() {
        let mut child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dot.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "dot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }
}

#[test]
fn tokens_nkeys_and_creds() {
    let good = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let (good_seed, other_seed) = (good.seed().unwrap(), other.seed().unwrap());
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.sig\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{other_seed}\n------END USER NKEY SEED------\n"
    );
    let d = deployment(&[
        (
            "tok.conf",
            "server_name: tok\nauthorization { token: s3cret }\nleafnodes { port: 17431 }\n",
        ),
        (
            "badtoken.conf",
            "server_name: bt\nleafnodes { remotes: [ { url: \"nats-leaf://wrong@tok:17431\" } ] }\n",
        ),
        (
            "goodtoken.conf",
            "server_name: gt\nleafnodes { remotes: [ { url: \"nats-leaf://s3cret@tok:17431\" } ] }\n",
        ),
        (
            "nk.conf",
            &format!(
                "server_name: nk\naccounts {{ EDGE: {{ users: [ {{ nkey: {} }} ] }} }}\nleafnodes {{ port: 17432 }}\n",
                good.public_key()
            ),
        ),
        (
            "goodkey.conf",
            &format!("server_name: gk\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://nk:17432\", nkey: {good_seed} }} ] }}\n"),
        ),
        (
            "badkey.conf",
            &format!("server_name: bk\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://nk:17432\", nkey: {other_seed} }} ] }}\n"),
        ),
        ("other.creds", &creds),
        (
            "badcreds.conf",
            "server_name: bc\nleafnodes { remotes: [ { url: \"nats-leaf://nk:17432\", credentials: \"other.creds\" } ] }\n",
        ),
    ]);
    let (code, f) = check(d.path());
    assert_eq!(code, 1);
    expect(
        &f,
        "the token in the remote URL is not the hub's",
        "error",
        &["badtoken.conf", "tok.conf"],
    );
    let key = other.public_key();
    let bad: Vec<&Value> = f
        .iter()
        .filter(|x| {
            x["message"]
                .as_str()
                .unwrap()
                .contains(&format!("has no nkey user {key}"))
        })
        .collect();
    assert_eq!(bad.len(), 2, "nkey seed and .creds both refused: {f:#?}");
    for x in &f {
        let m = x["message"].as_str().unwrap();
        assert!(
            !m.starts_with("gt ") && !m.starts_with("gk "),
            "a good remote was flagged: {m}"
        );
    }
}
