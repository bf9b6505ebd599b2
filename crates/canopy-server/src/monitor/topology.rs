//! The live topology view: `/topologyz` (JSON) and `/topology` (a page that draws it).
//!
//! `/topologyz` has this server (name, cluster, JetStream domain), its routes and leaf
//! links (peer names, accounts, RTT) and its configured remotes' state, plus the servers it
//! hears of through the system account: every Canopy server with a system account publishes
//! its own view on `$SYS.SERVER.<id>.TOPOLOGY` every [`INTERVAL`] (only when someone
//! listens), and each keeps the latest view per peer for three intervals. The page is one
//! HTML document with its script and styles inline (no CDN: it must work on an air-gapped
//! edge box); it polls `topologyz` and redraws an SVG.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::server::Server;

/// How often a server publishes its view.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A peer's view is dropped when it is older than this.
const STALE: Duration = Duration::from_secs(6);
/// Peers remembered per server at most (a hostile system-account user cannot grow it).
const MAX_PEERS: usize = 1024;

type Peers = HashMap<String, (Instant, Value)>;

/// Views heard per observing server (keyed by its id: tests run several servers in one
/// process).
fn peers() -> &'static Mutex<HashMap<String, Peers>> {
    static P: OnceLock<Mutex<HashMap<String, Peers>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

/// This server and its links, as it sees them.
pub fn local(s: &Arc<Server>) -> Value {
    let routes = crate::roles::route::routez(s, false);
    let leafz = crate::roles::leaf::leafz(s, false, None);
    let empty = Vec::new();
    let routes: Vec<Value> = routes["routes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| json!({"id": r["remote_id"], "name": r["remote_name"], "rtt": r["rtt"]}))
        .collect();
    let leafs: Vec<Value> = leafz["leafs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|l| {
            json!({"name": l["name"], "account": l["account"], "rtt": l["rtt"],
                   "solicited": l["canopy_solicited"], "link": l["canopy_link"]})
        })
        .collect();
    let remotes: Vec<Value> = leafz["canopy_remotes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| json!({"urls": r["urls"], "account": r["account"], "connected": r["connected"], "last_error": r["last_error"]}))
        .collect();
    json!({
        "id": s.id,
        "name": s.name,
        "cluster": s.cluster_name(),
        "jetstream": s.jetstream().is_some(),
        "domain": s.js_domain(),
        "routes": routes,
        "leafs": leafs,
        "remotes": remotes,
    })
}

/// Keeps a peer's published view (not our own).
pub fn record(s: &Server, view: Value) {
    let Some(id) = view["id"].as_str().map(str::to_string) else {
        return;
    };
    if id == s.id {
        return;
    }
    let mut all = peers().lock();
    let mine = all.entry(s.id.clone()).or_default();
    let now = Instant::now();
    mine.retain(|_, (at, _)| now.duration_since(*at) < STALE);
    if mine.len() >= MAX_PEERS && !mine.contains_key(&id) {
        return;
    }
    mine.insert(id, (now, view));
}

/// `/topologyz`: this server, and the servers heard through the system account.
pub fn topologyz(s: &Arc<Server>) -> Value {
    let now = Instant::now();
    let mut known: Vec<Value> = peers()
        .lock()
        .get(&s.id)
        .map(|m| {
            m.values()
                .filter(|(at, _)| now.duration_since(*at) < STALE)
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default();
    known.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "now": crate::monitor::rfc3339(std::time::SystemTime::now()),
        "server": local(s),
        "known": known,
    })
}

/// `/topology`: the page. `base` is the `http_base_path` (no trailing slash).
pub fn page(base: &str) -> String {
    PAGE.replace("@BASE@", base)
}

const PAGE: &str = r##"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Canopy topology</title>
<style>
body { font-family: sans-serif; margin: 1em; }
svg { border: 1px solid #ccc; background: #fafafa; }
.route { stroke: #3465a4; stroke-width: 2; }
.leaf { stroke: #4e9a06; stroke-width: 2; stroke-dasharray: 6 4; }
.down { stroke: #cc0000; stroke-width: 2; stroke-dasharray: 2 4; }
.node circle { fill: #fff; stroke: #555; stroke-width: 2; }
.node.self circle { fill: #fce94f; }
.node text, .label { font-size: 12px; }
#status { color: #555; }
</style></head>
<body>
<h1>Canopy topology</h1>
<p id="status">loading…</p>
<svg id="graph" width="900" height="640" viewBox="0 0 900 640"></svg>
<p>Blue: routes. Green dashed: leaf links (arrow towards the hub). Red dotted: a configured
remote that is down. Yellow: this server.</p>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function model(t) {
  const nodes = new Map();
  const edges = [];
  const add = (name, self) => {
    if (!name) return;
    if (!nodes.has(name)) nodes.set(name, { name: name, self: false, info: "" });
    if (self) nodes.get(name).self = true;
  };
  const views = [t.server].concat(t.known || []);
  for (const v of views) {
    add(v.name, v === t.server);
    const n = nodes.get(v.name);
    n.info = [v.cluster ? "cluster " + v.cluster : "", v.domain ? "domain " + v.domain : (v.jetstream ? "JetStream" : "")].filter(Boolean).join(", ");
    for (const r of v.routes || []) {
      add(r.name);
      if (!edges.some(e => e.kind === "route" && ((e.a === v.name && e.b === r.name) || (e.a === r.name && e.b === v.name))))
        edges.push({ kind: "route", a: v.name, b: r.name });
    }
    for (const l of v.leafs || []) {
      add(l.name);
      const leaf = l.solicited ? v.name : l.name, hub = l.solicited ? l.name : v.name;
      if (!edges.some(e => e.kind === "leaf" && e.a === leaf && e.b === hub))
        edges.push({ kind: "leaf", a: leaf, b: hub, label: l.account });
    }
    for (const r of v.remotes || []) {
      if (!r.connected) {
        const name = "? " + (r.urls || []).join(" ");
        add(name);
        edges.push({ kind: "down", a: v.name, b: name, label: r.last_error || "down" });
      }
    }
  }
  return { nodes: Array.from(nodes.values()), edges: edges };
}
function draw(t) {
  const m = model(t);
  const svg = document.getElementById("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const defs = el("defs", {});
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "28", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto" });
  marker.appendChild(el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#4e9a06" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  const cx = 450, cy = 320, r = Math.min(260, 60 + 30 * m.nodes.length);
  const pos = new Map();
  m.nodes.sort((a, b) => a.name < b.name ? -1 : 1).forEach((n, i) => {
    const a = 2 * Math.PI * i / Math.max(1, m.nodes.length) - Math.PI / 2;
    pos.set(n.name, [cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  for (const e of m.edges) {
    const [x1, y1] = pos.get(e.a), [x2, y2] = pos.get(e.b);
    const line = el("line", { x1: x1, y1: y1, x2: x2, y2: y2, "class": e.kind });
    if (e.kind === "leaf") line.setAttribute("marker-end", "url(#arrow)");
    svg.appendChild(line);
    if (e.label) svg.appendChild(el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "class": "label" }, e.label));
  }
  for (const n of m.nodes) {
    const [x, y] = pos.get(n.name);
    const g = el("g", { "class": n.self ? "node self" : "node", "data-name": n.name });
    g.appendChild(el("circle", { cx: x, cy: y, r: 18 }));
    g.appendChild(el("text", { x: x + 22, y: y - 4 }, n.name));
    if (n.info) g.appendChild(el("text", { x: x + 22, y: y + 12 }, n.info));
    svg.appendChild(g);
  }
  document.getElementById("status").textContent =
    m.nodes.length + " servers, " + m.edges.length + " links, as of " + t.now;
}
async function poll() {
  try {
    const r = await fetch("@BASE@/topologyz", { cache: "no-store" });
    draw(await r.json());
  } catch (e) {
    document.getElementById("status").textContent = "cannot read topologyz: " + e;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"##;
