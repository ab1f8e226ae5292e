//! Label indexes, so a pass over a few Deployments finds their pods and Services without
//! looking at every other one: a pass costs what changed, not what the node holds.

use std::collections::{BTreeMap, BTreeSet};

use skiff_spec::{Labels, Str};

/// Names (pods, Deployments' templates, Services' selectors) by each of their label pairs.
///
/// One ordered set of strings, each a pair and a name ([`pair`] then the name): the
/// names holding a pair are one range of it. A set of names per pair would cost a tree
/// node (hundreds of bytes) for each pair held by one name, which is most of them
/// (`app: <name>`); one string per entry is one allocation.
#[derive(Default)]
pub(super) struct LabelIndex {
    of: BTreeMap<String, Labels>,
    /// Short entries (most selectors' and templates') are kept inline.
    by: BTreeSet<Str>,
}

/// The pair `k: v` as the start of an index entry: each part after its length, so no
/// other pair's entry starts the same way, whatever the labels hold.
fn pair(k: &str, v: &str) -> Str {
    compact_str::format_compact!("{}:{k}{}:{v}", k.len(), v.len())
}

/// The entry for `name` holding `k: v`.
fn entry(k: &str, v: &str, name: &str) -> Str {
    let mut entry = pair(k, v);
    entry.push_str(name);
    entry
}

impl LabelIndex {
    /// Records (or replaces) `name`'s labels.
    pub(super) fn set(&mut self, name: &str, labels: &Labels) {
        if self.of.get(name) == Some(labels) {
            return;
        }
        self.remove(name);
        for (k, v) in labels {
            self.by.insert(entry(k, v, name));
        }
        self.of.insert(name.to_string(), labels.clone());
    }

    /// Forgets `name`.
    pub(super) fn remove(&mut self, name: &str) {
        let Some(labels) = self.of.remove(name) else {
            return;
        };
        for (k, v) in &labels {
            self.by.remove(&entry(k, v, name));
        }
    }

    /// Forgets every name.
    pub(super) fn clear(&mut self) {
        self.of.clear();
        self.by.clear();
    }

    /// The names holding the pair `k: v`, in order.
    fn holding<'a>(&'a self, k: &str, v: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = pair(k, v);
        let len = prefix.len();
        self.by
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |entry| entry.starts_with(prefix.as_str()))
            .map(move |entry| &entry[len..])
    }

    /// The names whose labels hold every pair of `selector` (none for an empty one, as
    /// a Service's empty selector picks nothing). Costs the rarest pair's names (times
    /// the pairs, to find which is rarest).
    pub(super) fn selected<'a>(&'a self, selector: &Labels) -> Vec<&'a str> {
        // Walk every pair's names in step: the first to end is the rarest.
        let mut walks: Vec<_> = selector.iter().map(|(k, v)| self.holding(k, v)).collect();
        let rarest = 'walk: loop {
            if walks.is_empty() {
                return Vec::new();
            }
            for (i, walk) in walks.iter_mut().enumerate() {
                if walk.next().is_none() {
                    break 'walk i;
                }
            }
        };
        let (k, v) = selector.iter().nth(rarest).expect("a walk per pair");
        self.holding(k, v)
            .filter(|n| {
                let labels = &self.of[*n];
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The names whose labels, read as a selector, pick `labels` (the Services that
    /// select a pod). Costs the names sharing a pair with `labels`.
    pub(super) fn selecting<'a>(&'a self, labels: &Labels) -> BTreeSet<&'a str> {
        labels
            .iter()
            .flat_map(|(k, v)| self.holding(k, v))
            .filter(|n| {
                let selector = &self.of[*n];
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
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
        assert!(pods.selected(&Labels::new()).is_empty());
        pods.set("web-2", &labels(&[("app", "api")]));
        assert_eq!(pods.selected(&labels(&[("app", "web")])), ["web-1"]);
        assert_eq!(
            pods.selected(&labels(&[("app", "api")])),
            ["api-1", "web-2"]
        );
        pods.remove("web-1");
        assert!(pods.selected(&labels(&[("app", "web")])).is_empty());
        assert!(pods.holding("tier", "front").next().is_none());
        assert_eq!(pods.by.len(), 2, "only web-2's and api-1's pairs are left");
    }

    #[test]
    fn labels_that_would_join_to_the_same_text_stay_apart() {
        // Labels are not checked for syntax: a hostile manifest may hold separators,
        // digits and colons anywhere.
        let mut pods = LabelIndex::default();
        pods.set("x", &labels(&[("a:b", "c")]));
        pods.set("y", &labels(&[("a", "b:c")]));
        pods.set("z", &labels(&[("1:a", "")]));
        pods.set("w", &labels(&[("1", "a0:")]));
        assert_eq!(pods.selected(&labels(&[("a:b", "c")])), ["x"]);
        assert_eq!(pods.selected(&labels(&[("a", "b:c")])), ["y"]);
        assert_eq!(pods.selected(&labels(&[("a", "b")])), Vec::<&str>::new());
        assert_eq!(pods.selected(&labels(&[("1:a", "")])), ["z"]);
        assert_eq!(pods.selected(&labels(&[("1", "a0:")])), ["w"]);
        pods.remove("x");
        assert_eq!(pods.selected(&labels(&[("a", "b:c")])), ["y"]);
        assert_eq!(pods.by.len(), 3);
    }

    #[test]
    fn finds_the_selectors_that_pick_a_set_of_labels() {
        let mut services = LabelIndex::default();
        services.set("web", &labels(&[("app", "web")]));
        services.set("front", &labels(&[("app", "web"), ("tier", "front")]));
        services.set("all", &Labels::new());
        let pod = labels(&[("app", "web"), ("pod-template-hash", "abc")]);
        assert_eq!(services.selecting(&pod), BTreeSet::from(["web"]));
        let front = labels(&[("app", "web"), ("tier", "front")]);
        assert_eq!(services.selecting(&front), BTreeSet::from(["front", "web"]));
    }
}
