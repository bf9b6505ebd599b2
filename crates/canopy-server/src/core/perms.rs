//! Compiled permissions: allow/deny subject rules for publish and subscribe, and
//! `allow_responses`. Built from config or JWT claims by [`crate::auth`], checked by the
//! connection roles and the interest model.

use canopy_conf::Permissions;
use canopy_subject::{subject_is_subset_of, subject_matches};

/// Compiled allow/deny lists for one direction.
#[derive(Debug, Clone, Default)]
pub struct SubjectRules {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

impl SubjectRules {
    /// May a message be published to this literal subject?
    pub fn permits_publish(&self, subject: &str) -> bool {
        if let Some(allow) = &self.allow {
            if !allow.iter().any(|a| subject_matches(a, subject)) {
                return false;
            }
        }
        !self.deny.iter().any(|d| subject_matches(d, subject))
    }

    /// May this subscription subject (possibly a wildcard) be subscribed to? A subject
    /// partly covered by a deny rule is allowed; the denied part is filtered at delivery.
    pub fn permits_subscribe(&self, subject: &str) -> bool {
        if let Some(allow) = &self.allow {
            if !allow.iter().any(|a| subject_is_subset_of(subject, a)) {
                return false;
            }
        }
        !self.deny.iter().any(|d| subject_is_subset_of(subject, d))
    }

    /// Is delivery of this literal subject denied (deny rules on wildcard subscriptions)?
    pub fn denies_delivery(&self, subject: &str) -> bool {
        self.deny.iter().any(|d| subject_matches(d, subject))
    }
}

/// A user's permissions, compiled.
#[derive(Debug, Clone, Default)]
pub struct Perms {
    pub publish: SubjectRules,
    pub subscribe: SubjectRules,
    /// `allow_responses`: publishing to the reply subjects of received requests is
    /// allowed, `max` times each (default 1) within `expires` (default 2m; 0 = never).
    pub allow_responses: Option<(u64, std::time::Duration)>,
}

impl SubjectRules {
    /// Compiles one direction of a permissions block (`None`: no rules).
    pub fn from_config(sp: &Option<canopy_conf::SubjectPermission>) -> SubjectRules {
        match sp {
            None => SubjectRules::default(),
            Some(sp) => SubjectRules {
                allow: if sp.allow.is_empty() {
                    None
                } else {
                    Some(sp.allow.clone())
                },
                deny: sp.deny.clone(),
            },
        }
    }
}

impl Perms {
    pub fn from_config(p: &Permissions) -> Perms {
        let rules = SubjectRules::from_config;
        let mut publish = rules(&p.publish);
        // With allow_responses and no publish rules, a user may publish replies only.
        if p.allow_responses.is_some() && p.publish.is_none() {
            publish.allow = Some(Vec::new());
        }
        Perms {
            publish,
            subscribe: rules(&p.subscribe),
            allow_responses: p
                .allow_responses
                .as_ref()
                .map(|r| (if r.max == 0 { 1 } else { r.max as u64 }, r.expires)),
        }
    }
}
