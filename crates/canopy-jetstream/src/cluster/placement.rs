//! Placement: which members hold a new stream.
//!
//! The candidates are the meta group's members that are up (this server, and the peers it
//! has a route to). A stream's `placement.cluster` must name this cluster, and every
//! `placement.tags` entry must be among a candidate's `server_tags` (compared without
//! case, as nats-server does). With `jetstream { unique_tag: <prefix> }` the chosen members
//! carry distinct values of the tag starting with `<prefix>:` (members without such a tag
//! are not eligible). Among the eligible, the least loaded (fewest streams assigned) win,
//! ties broken at random. Too few eligible members is nats-server's `10005` "no suitable
//! peers for placement".

use rand::seq::SliceRandom;
use serde_json::Value;

use super::Cluster;
use crate::api::errors::E;
use crate::types::StreamConfig;

/// One candidate member.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub name: String,
    pub tags: Vec<String>,
    pub load: usize,
}

/// Picks `want` members among `candidates` (see the module doc); `kept_tags` are the tags
/// of members the stream keeps (a replacement or a scale-up), whose `unique_tag` values
/// are taken already.
pub(crate) fn select(
    cfg: &StreamConfig,
    want: usize,
    cluster: Option<&str>,
    unique_tag: Option<&str>,
    mut candidates: Vec<Candidate>,
    kept_tags: &[Vec<String>],
) -> Result<Vec<String>, E> {
    let placement = cfg.placement.as_ref().filter(|p| !p.is_null());
    let p_cluster = placement
        .and_then(|p| p["cluster"].as_str())
        .filter(|c| !c.is_empty());
    let p_tags: Vec<String> = placement
        .and_then(|p| p["tags"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let no_peers =
        |detail: String| E::ClusterNoPeers(format!("no suitable peers for placement{detail}"));
    if let Some(c) = p_cluster {
        if cluster != Some(c) {
            return Err(no_peers(String::new()));
        }
    }
    candidates.retain(|c| {
        let tags: Vec<String> = c.tags.iter().map(|t| t.to_lowercase()).collect();
        p_tags.iter().all(|t| tags.contains(t))
    });
    if candidates.is_empty() && !p_tags.is_empty() {
        return Err(no_peers(format!(", tags not matched {p_tags:?}")));
    }
    candidates.shuffle(&mut rand::thread_rng());
    candidates.sort_by_key(|c| c.load);
    let mut chosen: Vec<String> = Vec::new();
    let unique = |tags: &[String]| {
        let p = format!("{}:", unique_tag.unwrap_or_default().to_lowercase());
        tags.iter()
            .map(|t| t.to_lowercase())
            .find(|t| t.starts_with(&p))
    };
    let mut used: Vec<String> = kept_tags.iter().filter_map(|t| unique(t)).collect();
    for c in candidates {
        if chosen.len() == want {
            break;
        }
        if unique_tag.is_some_and(|u| !u.is_empty()) {
            let Some(v) = unique(&c.tags) else {
                continue;
            };
            if used.contains(&v) {
                continue;
            }
            used.push(v);
        }
        chosen.push(c.name);
    }
    if chosen.len() < want {
        return Err(no_peers(String::new()));
    }
    Ok(chosen)
}

impl Cluster {
    /// Chooses the members for a new stream.
    pub(crate) fn place(
        &self,
        cfg: &StreamConfig,
        _engine: &crate::engine::Engine,
    ) -> Result<Vec<String>, E> {
        self.place_more(cfg, cfg.num_replicas.max(1) as usize, &[], &[])
    }

    /// A server's tags as this member knows them (its own, or from its status probe).
    pub(crate) fn tags_of(&self, name: &str) -> Vec<String> {
        if name == self.me.name {
            return self.tags.clone();
        }
        self.peer_status
            .lock()
            .get(name)
            .map(|s| s.tags.clone())
            .unwrap_or_default()
    }

    /// Chooses `want` more members for a stream that keeps `keep` (their `unique_tag`
    /// values are taken) and must not use `exclude`.
    pub(crate) fn place_more(
        &self,
        cfg: &StreamConfig,
        want: usize,
        keep: &[String],
        exclude: &[String],
    ) -> Result<Vec<String>, E> {
        let load = self.machine.state.lock().load();
        let online = self.js_peers();
        let members: Vec<String> = match self.meta_group() {
            Some(g) => g
                .status()
                .replicas
                .into_iter()
                .map(|r| r.peer.name)
                .collect(),
            None => vec![self.me.name.clone()],
        };
        let candidates = members
            .into_iter()
            .filter(|m| *m == self.me.name || online.contains(m))
            .filter(|m| !keep.contains(m) && !exclude.contains(m))
            .map(|name| Candidate {
                tags: self.tags_of(&name),
                load: load.get(&name).copied().unwrap_or(0),
                name,
            })
            .collect();
        let kept_tags: Vec<Vec<String>> = keep.iter().map(|k| self.tags_of(k)).collect();
        select(
            cfg,
            want,
            self.cluster_name().as_deref(),
            self.unique_tag.as_deref(),
            candidates,
            &kept_tags,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> StreamConfig {
        serde_json::from_value(v).unwrap()
    }

    fn cand(name: &str, tags: &[&str], load: usize) -> Candidate {
        Candidate {
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            load,
        }
    }

    #[test]
    fn the_least_loaded_matching_members_are_chosen() {
        let all = vec![
            cand("a", &["az:1", "ssd"], 3),
            cand("b", &["az:1"], 0),
            cand("c", &["az:2", "SSD"], 1),
        ];
        let r1 = cfg(serde_json::json!({"name": "S"}));
        assert_eq!(
            select(&r1, 1, Some("c1"), None, all.clone(), &[]).unwrap(),
            vec!["b"]
        );
        let ssd = cfg(serde_json::json!({"name": "S", "placement": {"tags": ["ssd"]}}));
        assert_eq!(
            select(&ssd, 1, Some("c1"), None, all.clone(), &[]).unwrap(),
            vec!["c"]
        );
        let r3 = cfg(serde_json::json!({"name": "S", "num_replicas": 3}));
        let mut got = select(&r3, 3, Some("c1"), None, all.clone(), &[]).unwrap();
        got.sort();
        assert_eq!(got, vec!["a", "b", "c"]);
        // unique_tag: two availability zones only.
        let e = select(&r3, 3, Some("c1"), Some("az"), all.clone(), &[]).unwrap_err();
        assert!(matches!(e, E::ClusterNoPeers(ref d) if d == "no suitable peers for placement"));
        let r2 = cfg(serde_json::json!({"name": "S", "num_replicas": 2}));
        let mut got = select(&r2, 2, Some("c1"), Some("az"), all.clone(), &[]).unwrap();
        got.sort();
        assert!(got == vec!["b", "c"] || got == vec!["a", "c"], "{got:?}");
        let other = cfg(serde_json::json!({"name": "S", "placement": {"cluster": "c2"}}));
        assert!(select(&other, 1, Some("c1"), None, all.clone(), &[]).is_err());
        let nope = cfg(serde_json::json!({"name": "S", "placement": {"tags": ["gpu"]}}));
        // A replacement next to a kept member in zone 1 must come from zone 2.
        assert_eq!(
            select(
                &r1,
                1,
                Some("c1"),
                Some("az"),
                vec![all[0].clone(), all[2].clone()],
                &[vec!["az:1".into()]]
            )
            .unwrap(),
            vec!["c"]
        );
        match select(&nope, 1, Some("c1"), None, all, &[]) {
            Err(E::ClusterNoPeers(d)) => assert!(d.contains("tags not matched"), "{d}"),
            other => panic!("{other:?}"),
        }
    }
}
