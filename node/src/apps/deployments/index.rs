//! Label indexes, so a pass over a few Deployments finds their pods and Services without
//! looking at every other one: a pass costs what changed, not what the node holds.

use std::collections::{BTreeMap, BTreeSet};

/// Names (pods, Deployments' templates, Services' selectors) by each of their label pairs.
#[derive(Default)]
pub(super) struct LabelIndex {
    of: BTreeMap<String, BTreeMap<String, String>>,
    by: BTreeMap<(String, String), BTreeSet<String>>,
}

impl LabelIndex {
    /// Records (or replaces) `name`'s labels.
    pub(super) fn set(&mut self, name: &str, labels: &BTreeMap<String, String>) {
        if self.of.get(name) == Some(labels) {
            return;
        }
        self.remove(name);
        for (k, v) in labels {
            self.by
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(name.to_string());
        }
        self.of.insert(name.to_string(), labels.clone());
    }

    /// Forgets `name`.
    pub(super) fn remove(&mut self, name: &str) {
        let Some(labels) = self.of.remove(name) else {
            return;
        };
        for pair in labels {
            if let Some(names) = self.by.get_mut(&pair) {
                names.remove(name);
                if names.is_empty() {
                    self.by.remove(&pair);
                }
            }
        }
    }

    /// Forgets every name.
    pub(super) fn clear(&mut self) {
        self.of.clear();
        self.by.clear();
    }

    /// The names whose labels hold every pair of `selector` (none for an empty one, as
    /// a Service's empty selector picks nothing). Costs the rarest pair's names.
    pub(super) fn selected<'a>(&'a self, selector: &BTreeMap<String, String>) -> Vec<&'a str> {
        let rarest = selector
            .iter()
            .map(|(k, v)| self.by.get(&(k.clone(), v.clone())))
            .min_by_key(|names| names.map_or(0, BTreeSet::len));
        let Some(Some(names)) = rarest else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| {
                let labels = &self.of[*n];
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(String::as_str)
            .collect()
    }

    /// The names whose labels, read as a selector, pick `labels` (the Services that
    /// select a pod). Costs the names sharing a pair with `labels`.
    pub(super) fn selecting<'a>(&'a self, labels: &BTreeMap<String, String>) -> BTreeSet<&'a str> {
        labels
            .iter()
            .filter_map(|(k, v)| self.by.get(&(k.clone(), v.clone())))
            .flatten()
            .filter(|n| {
                let selector = &self.of[*n];
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_by_every_pair_and_forgets_replaced_labels() {
        let mut pods = LabelIndex::default();
        pods.set("web-1", &labels(&[("app", "web"), ("tier", "front")]));
        pods.set("web-2", &labels(&[("app", "web"), ("tier", "back")]));
        pods.set("api-1", &labels(&[("app", "api")]));
        assert_eq!(
            pods.selected(&labels(&[("app", "web")])),
            ["web-1", "web-2"]
        );
        assert_eq!(
            pods.selected(&labels(&[("app", "web"), ("tier", "back")])),
            ["web-2"]
        );
        assert!(pods.selected(&labels(&[("app", "nope")])).is_empty());
        assert!(pods.selected(&BTreeMap::new()).is_empty());
        pods.set("web-2", &labels(&[("app", "api")]));
        assert_eq!(pods.selected(&labels(&[("app", "web")])), ["web-1"]);
        assert_eq!(
            pods.selected(&labels(&[("app", "api")])),
            ["api-1", "web-2"]
        );
        pods.remove("web-1");
        assert!(pods.selected(&labels(&[("app", "web")])).is_empty());
        assert!(!pods.by.contains_key(&("tier".into(), "front".into())));
    }

    #[test]
    fn finds_the_selectors_that_pick_a_set_of_labels() {
        let mut services = LabelIndex::default();
        services.set("web", &labels(&[("app", "web")]));
        services.set("front", &labels(&[("app", "web"), ("tier", "front")]));
        services.set("all", &BTreeMap::new());
        let pod = labels(&[("app", "web"), ("pod-template-hash", "abc")]);
        assert_eq!(services.selecting(&pod), BTreeSet::from(["web"]));
        let front = labels(&[("app", "web"), ("tier", "front")]);
        assert_eq!(services.selecting(&front), BTreeSet::from(["front", "web"]));
    }
}
