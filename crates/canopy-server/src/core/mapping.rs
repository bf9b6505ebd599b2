//! Account subject mappings (`mappings {}` at the top level for `$G`, or in an account):
//! every publish a client makes, and every message arriving over a leaf link, is mapped
//! before permissions and interest are consulted (nats-server maps CLIENT and LEAF
//! arrivals; a message from a route was already mapped by the server it entered). A
//! mapping's source is interest of the account, so links bring publishes on it here.
//!
//! An account without mappings pays one branch per publish (`Account::mappings` unset).

use canopy_conf::Options;
use canopy_subject::transform::{MapDest, Mapped as WMapped, WeightedMapping};

/// The compiled mappings of one account, in configuration order.
pub struct Mappings {
    list: Vec<WeightedMapping>,
    /// This server's configured cluster name (for cluster-scoped destinations).
    cluster: Option<String>,
}

/// What a mapping did to a subject.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    /// No mapping applies (or it maps the subject onto itself).
    Unchanged,
    /// The message continues on this subject.
    To(String),
    /// The weights chose the remainder of a mapping that lists its own source: dropped.
    Drop,
}

impl Mappings {
    /// Compiles configured mappings; the error names the mapping.
    pub fn new(ms: &[canopy_conf::Mapping], cluster: Option<&str>) -> Result<Mappings, String> {
        let mut list = Vec::with_capacity(ms.len());
        for m in ms {
            let dests: Vec<MapDest> = m
                .destinations
                .iter()
                .map(|d| MapDest {
                    subject: d.subject.clone(),
                    weight: d.weight,
                    cluster: d.cluster.clone(),
                })
                .collect();
            let wm = WeightedMapping::new(&m.source, &dests)
                .map_err(|e| format!("invalid mapping \"{}\": {e}", m.source))?;
            list.push(wm);
        }
        Ok(Mappings {
            list,
            cluster: cluster.filter(|c| !c.is_empty()).map(str::to_string),
        })
    }

    /// The mapping sources (interest of the account).
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|m| m.source())
    }

    /// `/accountz` `mappings` in nats-server's shape: source → `[{subject, weight,
    /// cluster?}]`, where (as nats-server shows it) the weight is cumulative in ascending
    /// order and a remainder kept on the source itself is listed.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for m in &self.list {
            let unscoped = m.destinations.iter().map(|d| (d, None));
            let scoped = m
                .cluster_destinations
                .iter()
                .flat_map(|(c, v)| v.iter().map(move |d| (d, Some(c.as_str()))));
            let dests: Vec<serde_json::Value> = unscoped
                .chain(scoped)
                .map(|(d, cluster)| {
                    let mut j = serde_json::json!({
                        "subject": d.transform.destination(),
                        "weight": d.cumulative,
                    });
                    if let Some(c) = cluster {
                        j["cluster"] = c.into();
                    }
                    j
                })
                .collect();
            out.insert(m.source().to_string(), dests.into());
        }
        out.into()
    }

    /// Maps a published subject: a mapping whose source equals the subject wins, else the
    /// first (in configuration order) whose wildcard source matches it.
    pub fn map(&self, subject: &str) -> Mapped {
        let m = self
            .list
            .iter()
            .find(|m| m.source() == subject)
            .or_else(|| self.list.iter().find(|m| m.matches(subject)));
        let Some(m) = m else {
            return Mapped::Unchanged;
        };
        let roll = rand::random::<u32>();
        match m.map(subject, self.cluster.as_deref(), roll) {
            Ok(WMapped::Subject(s)) if s != subject => Mapped::To(s.into_owned()),
            Ok(WMapped::Dropped) => Mapped::Drop,
            // A transform that cannot apply to this subject (too few tokens for a
            // function, say) leaves it as it is, as nats-server does.
            _ => Mapped::Unchanged,
        }
    }
}

/// Checks every configured mapping at start (and reload): `file:line:col: what` per error.
pub fn validate(o: &Options) -> Result<(), Vec<String>> {
    let cluster = o.cluster.as_ref().and_then(|c| c.name.as_deref());
    let mut errs = Vec::new();
    let all = o
        .accounts
        .iter()
        .flat_map(|a| a.mappings.iter())
        .chain(o.mappings.iter());
    for m in all {
        if let Err(e) = Mappings::new(std::slice::from_ref(m), cluster) {
            errs.push(format!("{}: {e}", m.pos));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(source: &str, dests: &[(&str, u8)]) -> canopy_conf::Mapping {
        canopy_conf::Mapping {
            source: source.into(),
            destinations: dests
                .iter()
                .map(|(s, w)| canopy_conf::MapDest {
                    subject: (*s).into(),
                    weight: *w,
                    cluster: None,
                })
                .collect(),
            pos: Default::default(),
        }
    }

    #[test]
    fn literal_before_wildcard_and_unmatched_unchanged() {
        let m = Mappings::new(
            &[
                mapping("orders.*", &[("orders.{{wildcard(1)}}.eu", 100)]),
                mapping("orders.vip", &[("vip", 100)]),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.map("orders.vip"), Mapped::To("vip".into()));
        assert_eq!(m.map("orders.1"), Mapped::To("orders.1.eu".into()));
        assert_eq!(m.map("other"), Mapped::Unchanged);
        assert_eq!(m.sources().collect::<Vec<_>>(), ["orders.*", "orders.vip"]);
    }

    #[test]
    fn cluster_scoped_destinations_apply_in_their_cluster() {
        let mut m = mapping("east", &[("e.default", 100)]);
        m.destinations.push(canopy_conf::MapDest {
            subject: "e.local".into(),
            weight: 100,
            cluster: Some("C1".into()),
        });
        let ms = std::slice::from_ref(&m);
        let in_c1 = Mappings::new(ms, Some("C1")).unwrap_or_else(|e| panic!("{e}"));
        let in_c2 = Mappings::new(ms, Some("C2")).unwrap_or_else(|e| panic!("{e}"));
        let alone = Mappings::new(ms, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_c1.map("east"), Mapped::To("e.local".into()));
        assert_eq!(in_c2.map("east"), Mapped::To("e.default".into()));
        assert_eq!(alone.map("east"), Mapped::To("e.default".into()));
    }

    #[test]
    fn explicit_source_remainder_drops() {
        let m = Mappings::new(&[mapping("a", &[("a", 0), ("b", 0)])], None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.map("a"), Mapped::Drop);
    }
}
