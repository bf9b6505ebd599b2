//! The live topology view (issue 17 item 3): `/topologyz` on a 3-hub cluster with 2 leaves
//! knows every server (its own links, and the other hubs' through the system account),
//! and the `/topology` page, rendered by headless Chromium (Debian's `chromium`; the page
//! part is skipped without it), draws every server and follows a leaf that disconnects.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use canopy_testkit::{free_fixed_port, http_get, ServerProcess};
use serde_json::Value;

fn hub(name: &str, route: u16, peers: &[u16], leaf: u16) -> ServerProcess {
    let routes: Vec<String> = peers
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    ServerProcess::canopy(&format!(
        "server_name: {name}\nlisten: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
         accounts {{ SYS: {{ users: [ {{ user: sys, password: sys }} ] }}, APP: {{ users: [ {{ user: app, password: app }} ] }} }}\n\
         system_account: SYS\n\
         cluster {{ name: hubs, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n\
         leafnodes {{ listen: \"127.0.0.1:{leaf}\", authorization {{ users: [ {{ user: edge, password: edge, account: APP }} ] }} }}\n",
        routes.join(", ")
    ))
    .unwrap()
}

fn leaf(name: &str, hub_leaf: u16) -> ServerProcess {
    ServerProcess::canopy(&format!(
        "server_name: {name}\nlisten: 127.0.0.1:-1\n\
         leafnodes {{ remotes: [ {{ url: \"nats-leaf://edge:edge@127.0.0.1:{hub_leaf}\" }} ] }}\n"
    ))
    .unwrap()
}

/// Every server name `/topologyz` mentions: this server, the known ones, their peers.
fn names(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut views = vec![v["server"].clone()];
    views.extend(v["known"].as_array().cloned().unwrap_or_default());
    for view in &views {
        out.push(view["name"].as_str().unwrap_or("").to_string());
        for key in ["routes", "leafs"] {
            for l in view[key].as_array().cloned().unwrap_or_default() {
                out.push(l["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out.retain(|n| !n.is_empty());
    out
}

fn wait_names(s: &ServerProcess, want: &[&str], absent: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = s.monitor("/topologyz").unwrap();
        let got = names(&v);
        if want.iter().all(|w| got.iter().any(|g| g == w))
            && absent.iter().all(|a| !got.iter().any(|g| g == a))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "topologyz never showed {want:?} without {absent:?}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The page as headless Chromium leaves it after its script ran (None without chromium).
fn rendered(url: &str) -> Option<String> {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=4000",
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn live_topology_of_three_hubs_and_two_leaves() {
    let (r1, r2, r3) = (free_fixed_port(), free_fixed_port(), free_fixed_port());
    let (l1, l2, l3) = (free_fixed_port(), free_fixed_port(), free_fixed_port());
    let h1 = hub("hub-a", r1, &[r2, r3], l1);
    let _h2 = hub("hub-b", r2, &[r1, r3], l2);
    let _h3 = hub("hub-c", r3, &[r1, r2], l3);
    let _e1 = leaf("edge-1", l1);
    let e2 = leaf("edge-2", l3);
    let all = ["hub-a", "hub-b", "hub-c", "edge-1", "edge-2"];
    let v = wait_names(&h1, &all, &[]);
    assert_eq!(v["server"]["cluster"], "hubs", "{v:#}");
    // edge-2 hangs off hub-c: hub-a knows it only through hub-c's published view.
    let c = v["known"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "hub-c")
        .cloned()
        .unwrap();
    assert_eq!(c["leafs"][0]["name"], "edge-2", "{c:#}");
    assert_eq!(c["leafs"][0]["account"], "APP");

    let url = format!("http://127.0.0.1:{}/topology", h1.http_port.unwrap());
    let (status, page) = http_get(h1.http_port.unwrap(), "/topology").unwrap();
    assert_eq!(status, 200);
    for external in ["src=", "href=\"http", "@import", "url(http"] {
        assert!(
            !page.contains(external),
            "the page must load nothing from elsewhere ({external})"
        );
    }
    let Some(dom) = rendered(&url) else {
        eprintln!("chromium not installed: the page was not rendered");
        return;
    };
    for n in all {
        assert!(
            dom.contains(&format!("data-name=\"{n}\"")),
            "{n} not drawn:\n{dom}"
        );
    }
    assert!(dom.contains("5 servers"), "{dom}");
    // A leaf disconnects: the view and the page follow.
    drop(e2);
    wait_names(&h1, &all[..4], &["edge-2"]);
    let dom = rendered(&url).unwrap();
    assert!(
        !dom.contains("data-name=\"edge-2\""),
        "edge-2 still drawn:\n{dom}"
    );
    assert!(dom.contains("data-name=\"edge-1\""), "{dom}");
}
