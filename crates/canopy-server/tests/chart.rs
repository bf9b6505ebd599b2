//! Canopy under the official NATS Helm chart (nats-io/k8s `helm/charts/nats`, 2.14.x):
//! each server here runs the `nats.conf` the chart renders for `deploy/helm/hub-values.yaml`
//! and `deploy/helm/leaf-values.yaml` (docs/KUBERNETES.md), as the pod runs it:
//! `--config <file>` and `SERVER_NAME` in the environment (`server_name: $SERVER_NAME`),
//! a JSON-style file with `include`s, routes that list every member including the pod
//! itself, `pid_file`, lame duck settings, the three probe paths, the exporter's endpoints,
//! the reloader's SIGHUP through the pid file and the pre-stop hook's
//! `nats-server -sl=ldm=<pid file>`. Only host names and ports differ from a real pod:
//! loopback ports instead of 4222/6222/7422/8222 and `localhost` instead of the headless
//! service's names.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use canopy_testkit::{
    assert_eventually, canopy_bin, free_fixed_port, http_get, Impl, RawClient, ServerProcess, Setup,
};
use nkeys::KeyPair;
use serde_json::{json, Value};

mod pki;
use pki::*;

/// The chart's `nats.formatConfig`: the config document as pretty JSON with sorted keys
/// (Go's encoder), then `"<< x >>"` unquoted (`$SERVER_NAME`, `10Gi`) and every
/// `"…$include": "file"` member turned into `include file;`.
fn format_config(doc: &Value) -> String {
    let pretty = serde_json::to_string_pretty(&sorted(doc)).unwrap();
    let mut out = String::new();
    for line in pretty.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some((key, rest)) = trimmed.split_once("\": \"") {
            if key.ends_with("$include") {
                let file = rest.trim_end_matches(',').trim_end_matches('"');
                out.push_str(&format!("{indent}include {file};\n"));
                continue;
            }
        }
        let mut l = line.to_string();
        while let (Some(a), Some(b)) = (l.find("\"<< "), l.find(" >>\"")) {
            if b < a {
                break;
            }
            l = format!("{}{}{}", &l[..a], &l[a + 4..b], &l[b + 4..]);
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// A copy of `v` with object keys in byte order, whatever serde_json's map keeps.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// What `files/config/config.yaml` always renders (server name from the environment, lame
/// duck, pid file, client port, monitoring port), with the pod's `/var/run/nats` and the
/// well-known ports replaced by the test's.
fn base_doc(pod_dir: &Path) -> Value {
    json!({
        "server_name": "<< $SERVER_NAME >>",
        "lame_duck_grace_period": "10s",
        "lame_duck_duration": "30s",
        "pid_file": pod_dir.join("nats.pid"),
        "port": -1,
        "http_port": -1,
    })
}

/// One StatefulSet pod: its scratch directory (`/var/run/nats`, `/data`) and the ports the
/// other pods must know in advance.
struct Pod {
    dir: tempfile::TempDir,
    cluster: u16,
    leaf: u16,
}

impl Pod {
    fn new() -> Pod {
        Pod {
            dir: tempfile::tempdir().unwrap(),
            cluster: free_fixed_port(),
            leaf: free_fixed_port(),
        }
    }
}

/// The hub's `nats.conf` as the chart renders `deploy/helm/hub-values.yaml` for pod `i`
/// (`jetstream: false` renders it with `config.jetstream.enabled: false`).
fn hub_conf(i: usize, pods: &[Pod], jetstream: bool) -> String {
    let pod = &pods[i];
    let mut doc = base_doc(pod.dir.path());
    // config.merge.$include: the accounts file (operator, system account, preloads).
    doc["$include"] = json!("nats-accounts/resolver.conf");
    // files/config/cluster.yaml: every replica's route, this pod's own included.
    doc["cluster"] = json!({
        "name": "hub-cluster",
        "port": pod.cluster,
        "no_advertise": true,
        "routes": pods.iter().map(|p| format!("nats://localhost:{}", p.cluster)).collect::<Vec<_>>(),
    });
    // files/config/leafnodes.yaml
    doc["leafnodes"] = json!({"port": pod.leaf, "no_advertise": true});
    // config.resolver (+ merge type: full)
    doc["resolver"] = json!({"dir": pod.dir.path().join("data/resolver"), "type": "full"});
    if jetstream {
        // files/config/jetstream.yaml with memoryStore and fileStore.pvc sizes, + domain.
        doc["jetstream"] = json!({
            "max_memory_store": "<< 2Gi >>",
            "max_file_store": "<< 10Gi >>",
            "store_dir": pod.dir.path().join("data"),
            "domain": "hub",
        });
    }
    format_config(&doc)
}

/// The leaf's `nats.conf` as the chart renders `deploy/helm/leaf-values.yaml`, its remote
/// pointed at `hub_leaf_port` and its credentials at `creds` (the mounted secret).
fn leaf_conf(pod: &Pod, hub_leaf_port: u16, creds: &Path) -> String {
    let mut doc = base_doc(pod.dir.path());
    doc["leafnodes"] = json!({
        "port": pod.leaf,
        "no_advertise": true,
        "remotes": [{
            "url": format!("nats-leaf://localhost:{hub_leaf_port}"),
            "credentials": creds,
        }],
    });
    doc["jetstream"] = json!({
        "max_memory_store": "<< 512Mi >>",
        "max_file_store": "<< 5Gi >>",
        "store_dir": pod.dir.path().join("data"),
        "domain": "leaf",
    });
    format_config(&doc)
}

/// Starts a pod's server as the chart's container does: its config, `SERVER_NAME` (and
/// `POD_NAME`) in the environment, and the files its `include`s name.
fn start_pod(name: &str, conf: &str, files: &[(&str, String)]) -> ServerProcess {
    let setup = Setup {
        env: vec![
            ("POD_NAME".into(), name.into()),
            ("SERVER_NAME".into(), name.into()),
        ],
        files: files
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    };
    ServerProcess::start_with(Impl::Canopy, conf, &[], &setup)
        .unwrap_or_else(|e| panic!("{name} did not start: {e:#}\n{conf}"))
}

/// The probes of `files/stateful-set/nats-container.yaml` (startup, readiness, liveness),
/// then the endpoints the prometheus exporter sidecar scrapes: all must answer 200.
fn assert_probes_and_exporter(name: &str, s: &ServerProcess) {
    let port = s.http_port.unwrap();
    for path in [
        "/healthz",
        "/healthz?js-server-only=true",
        "/healthz?js-enabled-only=true",
        "/varz",
        "/connz",
        "/routez",
        "/subsz",
        "/leafz",
        "/jsz?accounts=true&streams=true&consumers=true&config=true",
    ] {
        let (status, body) = http_get(port, path).unwrap();
        assert_eq!(status, 200, "{name} GET {path}: {body}");
    }
}

/// The hub of `hub-values.yaml` (three members, routes to all of them, operator mode
/// through an included accounts file, leafnodes), and the leaf of `leaf-values.yaml`
/// joining it with a `.creds` secret; traffic crosses the leaf link and a route.
async fn hub_and_leaf_scenario(hub_jetstream: bool) {
    let pki = Pki::new();
    // In operator mode JetStream is per account: the account JWT grants storage.
    let app_jwt = if hub_jetstream {
        pki.account_jwt(
            &pki.app,
            "APP",
            json!({"limits": {"subs": -1, "conn": -1, "leaf": -1, "imports": -1,
                "exports": -1, "data": -1, "payload": -1, "wildcards": true,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
        )
    } else {
        pki.account_jwt(&pki.app, "APP", json!({}))
    };
    let accounts = pki.accounts_conf(&app_jwt);
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let hub: Vec<ServerProcess> = (0..3)
        .map(|i| {
            start_pod(
                &format!("nats-hub-{i}"),
                &hub_conf(i, &pods, hub_jetstream),
                &[("nats-accounts/resolver.conf", accounts.clone())],
            )
        })
        .collect();
    let ids: Vec<String> = hub
        .iter()
        .map(|s| {
            s.monitor("/varz").unwrap()["server_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (i, s) in hub.iter().enumerate() {
        assert_eventually!(
            Duration::from_secs(15),
            s.monitor("/routez")
                .map(|v| v["num_routes"] == 2)
                .unwrap_or(false),
            "nats-hub-{i}: cluster did not form: {}\n{}",
            s.monitor("/routez").unwrap(),
            s.log()
        );
    }
    for (i, s) in hub.iter().enumerate() {
        let v = s.monitor("/varz").unwrap();
        assert_eq!(v["server_name"], format!("nats-hub-{i}"), "$SERVER_NAME");
        assert_eq!(v["cluster"]["name"], "hub-cluster");
        // The route to itself (its own headless name) is dropped, not a peer.
        let r = s.monitor("/routez").unwrap();
        let peers: Vec<&str> = r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["remote_id"].as_str().unwrap())
            .collect();
        assert!(!peers.contains(&ids[i].as_str()), "route to self: {r}");
        assert_eq!(peers.len(), 2, "{r}");
        // no_advertise: clients are not told the other members' addresses.
        let (_c, info) = RawClient::connect(&s.addr()).unwrap();
        assert!(
            info["connect_urls"].as_array().is_none_or(|a| a.is_empty()),
            "{info}"
        );
        assert_probes_and_exporter(&format!("nats-hub-{i}"), s);
    }

    // The leaf: the creds secret mounted as a file, the remote at the hub's leafnode port
    // (the LoadBalancer service lands on some member: here the first).
    let leaf_pod = Pod::new();
    let leaf_user = KeyPair::new_user();
    let creds_path = leaf_pod.dir.path().join("nats-creds/leaf/leaf.creds");
    std::fs::create_dir_all(creds_path.parent().unwrap()).unwrap();
    std::fs::write(
        &creds_path,
        creds(
            &pki.user_jwt(&pki.app, &leaf_user, now() - 10, json!({})),
            &leaf_user,
        ),
    )
    .unwrap();
    let leaf = start_pod(
        "nats-leaf-0",
        &leaf_conf(&leaf_pod, pods[0].leaf, &creds_path),
        &[],
    );
    assert_eventually!(
        Duration::from_secs(10),
        hub[0]
            .monitor("/leafz")
            .map(|v| v["leafnodes"] == 1)
            .unwrap_or(false),
        "leaf did not connect: {}\n{}",
        leaf.log(),
        hub[0].log()
    );
    assert_eq!(
        hub[0].monitor("/leafz").unwrap()["leafs"][0]["account"],
        pki.app.public_key()
    );
    assert_probes_and_exporter("nats-leaf-0", &leaf);
    assert!(leaf.log().contains("Server is ready"));

    // Messages both ways between a leaf client and clients on other hub members.
    let hub_user = KeyPair::new_user();
    let hub_creds = creds(
        &pki.user_jwt(&pki.app, &hub_user, now() - 10, json!({})),
        &hub_user,
    );
    let on_hub2 = connect_creds(&hub[2].url(), &hub_creds).await;
    let on_hub1 = connect_creds(&hub[1].url(), &hub_creds).await;
    let on_leaf = async_nats::connect(leaf.url()).await.unwrap();
    roundtrip(&on_leaf, &on_hub2, "orders.from.leaf").await;
    roundtrip(&on_hub1, &on_leaf, "orders.to.leaf").await;

    if hub_jetstream {
        // Streams on the hub cluster (R1 placed on one member, then R3), created through
        // one member and written through another.
        // The members agree on a meta leader first (until then the API answers 10008, as
        // nats-server's does right after start-up).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !hub.iter().all(|s| {
            s.monitor("/jsz").is_ok_and(|v| {
                v["meta_cluster"]["leader"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty())
            })
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "no JetStream meta leader:\n{}",
                hub[0].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let js = async_nats::jetstream::new(on_hub1.clone());
        let js2 = async_nats::jetstream::new(on_hub2.clone());
        for (name, replicas) in [("ORDERS", 1), ("ORDERS_R3", 3)] {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec![format!("hub.{name}.>")],
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{name} (R{replicas}): {e}"));
            for n in 0..3 {
                js2.publish(format!("hub.{name}.{n}"), "o".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            let mut stream = js.get_stream(name).await.unwrap();
            assert_eq!(stream.info().await.unwrap().state.messages, 3, "{name}");
        }
        for (i, s) in hub.iter().enumerate() {
            let (status, body) =
                http_get(s.http_port.unwrap(), "/healthz?js-server-only=true").unwrap();
            assert_eq!(status, 200, "nats-hub-{i}: {body}");
        }
    }
    drop(leaf);
    drop(hub);
}

/// `hub-values.yaml` with `config.jetstream.enabled: false`: runs today.
#[tokio::test]
async fn chart_hub_cluster_and_creds_leaf() {
    hub_and_leaf_scenario(false).await;
}

/// `hub-values.yaml` as shipped (JetStream on a 3-member cluster).
#[tokio::test]
async fn chart_hub_cluster_with_jetstream_and_creds_leaf() {
    hub_and_leaf_scenario(true).await;
}

/// The hub config has the shape the chart renders (and starts, `/jsz` answering).
#[test]
fn chart_hub_conf_has_the_chart_shape() {
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let pki = Pki::new();
    let accounts = pki.accounts_conf(&pki.account_jwt(&pki.app, "APP", json!({})));
    let setup = Setup {
        env: vec![("SERVER_NAME".into(), "nats-hub-0".into())],
        files: vec![("nats-accounts/resolver.conf".into(), accounts)],
    };
    let conf = hub_conf(0, &pods, true);
    // The shape the chart renders: unquoted variable and sizes, include directives.
    for want in [
        "  include nats-accounts/resolver.conf;\n",
        "  \"server_name\": $SERVER_NAME\n",
        "    \"max_file_store\": 10Gi,\n",
    ] {
        assert!(conf.contains(want), "{want:?} not in\n{conf}");
    }
    let s = ServerProcess::start_with(Impl::Canopy, &conf, &[], &setup).unwrap();
    assert!(s.monitor("/jsz").is_ok());
}

/// A directory with `nats-server` → this build's canopy-server, as the image provides it
/// for the chart's pre-stop hook and scripts.
fn nats_server_alias() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let alias = dir.path().join("nats-server");
    std::os::unix::fs::symlink(canopy_bin(), &alias).unwrap();
    (dir, alias)
}

/// The pod's life: the pid file as the reloader reads it, a config change applied by
/// SIGHUP to that pid, `-v` through the `nats-server` name, and the pre-stop hook's
/// `nats-server -sl=ldm=/var/run/nats/nats.pid` draining clients before the server exits.
#[test]
fn chart_pod_reload_and_lame_duck_pre_stop() {
    let pod = Pod::new();
    let mut doc = base_doc(pod.dir.path());
    // config.merge: shorter lame duck for the test, and an included file to change.
    doc["lame_duck_duration"] = json!("2s");
    doc["lame_duck_grace_period"] = json!("500ms");
    doc["zzz$include"] = json!("extra.conf");
    let conf = format_config(&doc);
    assert!(conf.contains("include extra.conf;"), "{conf}");
    let mut s = start_pod(
        "nats-0",
        &conf,
        &[("extra.conf", "max_payload: 1MB\n".to_string())],
    );
    let pid_file = pod.dir.path().join("nats.pid");
    // The reloader parses the file as bare digits.
    let text = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(text, s.pid().unwrap().to_string(), "pid file {text:?}");
    assert_eq!(s.monitor("/varz").unwrap()["max_payload"], 1024 * 1024);

    // The reloader: the ConfigMap changed on disk, SIGHUP to the pid from the file.
    std::fs::write(
        s.config_path.with_file_name("extra.conf"),
        "max_payload: 2MB\n",
    )
    .unwrap();
    let st = Command::new("kill")
        .args(["-HUP", text.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eventually!(
        Duration::from_secs(5),
        s.monitor("/varz").unwrap()["max_payload"] == 2 * 1024 * 1024,
        "reload not applied: {}",
        s.log()
    );

    // The image's `nats-server` name answers `-v` as nats-server does, then says what it is.
    let (_alias_dir, alias) = nats_server_alias();
    let out = Command::new(&alias).arg("-v").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("nats-server: v2."), "{v}");
    assert!(
        v.contains("canopy v") && v.contains("implements nats-server v2."),
        "{v}"
    );

    // The pre-stop hook, with a client connected.
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false}\r\nSUB x 1\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    let out = Command::new(&alias)
        .arg(format!("-sl=ldm={}", pid_file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("Entering lame duck mode"),
        "no lame duck: {}",
        s.log()
    );
    // New connections are refused from now on (the Service stops sending clients here)
    // while the connected client is closed within the lame duck duration.
    assert!(RawClient::connect(&s.addr()).is_err());
    assert!(
        c.is_closed_by_server(Duration::from_secs(8)),
        "client not closed by lame duck"
    );
    let st = s.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{st}");
    assert!(!pid_file.exists(), "pid file left behind");
}
