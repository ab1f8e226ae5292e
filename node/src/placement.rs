//! Where a Deployment's pods run: computed by every node from the same inputs (the
//! replicated desired state and the live members gossip shows), so no scheduler is
//! needed and a dead node's pods move as soon as the detector marks it dead.
//!
//! Each pod slot `i` of Deployment `d` ranks the eligible nodes (ready, schedulable,
//! matching the `nodeSelector`, with memory left for the pod) by weighted rendezvous
//! hashing, `-capacity / ln(h(d, i, node))`, and takes the best one that keeps the
//! Deployment spread: at most `ceil(replicas / nodes)` pods per node and
//! `ceil(replicas / zones)` per zone. Pods stay where they run: a slot goes first to a
//! node that already runs more of the Deployment's pods than it was given so far, when
//! that keeps the spread; so a node that joins gets new pods (a new Deployment, a
//! scale-up) but takes none away, and pods move only when needed: off a dead, cordoned
//! or unfitting node, or to spread again. The hash is FNV-1a mixed by SplitMix64, fixed
//! here so every build and every node agrees.

use std::collections::BTreeMap;

/// The zone label a node's pods are spread over (also read as plain `zone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node pods may be placed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its node id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Memory it offers pods, bytes.
    pub capacity: u64,
    /// False when cordoned.
    pub schedulable: bool,
}

impl Candidate {
    fn zone(&self) -> Option<&str> {
        self.labels
            .get(ZONE_LABEL)
            .or_else(|| self.labels.get("zone"))
            .map(String::as_str)
    }
}

/// What placement needs of a Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Its name.
    pub name: String,
    /// How many pods.
    pub replicas: u32,
    /// Labels a node must have.
    pub node_selector: skiff_spec::Labels,
    /// Memory each pod needs, bytes.
    pub memory: u64,
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weighted rendezvous score of `node` for slot `slot` of `deployment`.
fn score(deployment: &str, slot: u32, node: &Candidate) -> f64 {
    let h = splitmix(fnv1a(&[
        deployment.as_bytes(),
        &slot.to_le_bytes(),
        node.id.as_bytes(),
    ]));
    // A uniform number in (0, 1): 53 bits, never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let weight = (node.capacity.max(1) as f64).ln_1p();
    -weight / u.ln()
}

/// Pods each node runs now, by Deployment, then node id.
pub type Current = BTreeMap<String, BTreeMap<String, u32>>;

/// Pods per node for every Deployment in `wants` (by name, then node id), given where
/// they run now (`current`), placed in name order so memory is shared out the same way
/// everywhere. Slots no node can take are left out (the pods wait, as Kubernetes'
/// Pending ones do).
pub fn place(
    wants: &[Want],
    nodes: &[Candidate],
    current: &Current,
) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut free: BTreeMap<&str, u64> = nodes.iter().map(|n| (n.id.as_str(), n.capacity)).collect();
    let mut sorted: Vec<&Want> = wants.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = BTreeMap::new();
    for want in sorted {
        let eligible: Vec<&Candidate> = nodes
            .iter()
            .filter(|n| n.schedulable)
            .filter(|n| {
                want.node_selector
                    .iter()
                    .all(|(k, v)| n.labels.get(k.as_str()).map(String::as_str) == Some(v))
            })
            .collect();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        if !eligible.is_empty() {
            let zones: std::collections::BTreeSet<Option<&str>> =
                eligible.iter().map(|n| n.zone()).collect();
            let per_node = want.replicas.div_ceil(eligible.len() as u32);
            let per_zone = want.replicas.div_ceil(zones.len() as u32);
            let mut in_zone: BTreeMap<Option<&str>, u32> = BTreeMap::new();
            for slot in 0..want.replicas {
                let mut ranked: Vec<(f64, &Candidate)> = eligible
                    .iter()
                    .map(|n| (score(&want.name, slot, n), *n))
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
                let fits = |n: &Candidate, spread: bool| {
                    free[n.id.as_str()] >= want.memory
                        && (!spread
                            || (counts.get(&n.id).copied().unwrap_or(0) < per_node
                                && in_zone.get(&n.zone()).copied().unwrap_or(0) < per_zone))
                };
                let runs = current.get(&want.name);
                let holds_more = |n: &Candidate| {
                    runs.and_then(|r| r.get(&n.id)).copied().unwrap_or(0)
                        > counts.get(&n.id).copied().unwrap_or(0)
                };
                // Where a pod runs already, if that keeps the spread; else the best
                // spread node; when memory rules that out, any node with room.
                let pick = ranked
                    .iter()
                    .find(|(_, n)| holds_more(n) && fits(n, true))
                    .or_else(|| ranked.iter().find(|(_, n)| fits(n, true)))
                    .or_else(|| ranked.iter().find(|(_, n)| fits(n, false)))
                    .map(|(_, n)| *n);
                let Some(node) = pick else { continue };
                *free
                    .get_mut(node.id.as_str())
                    .expect("every node has a budget") -= want.memory;
                *counts.entry(node.id.clone()).or_default() += 1;
                *in_zone.entry(node.zone()).or_default() += 1;
            }
        }
        out.insert(want.name.clone(), counts);
    }
    out
}

/// How many pods this node keeps of a Deployment: its `share`, or more while the
/// others' ready pods (`others_ready`) do not yet make up for what it would give up
/// (`local` pods now), so a pod moving off a live node is ready elsewhere before it
/// stops here.
pub fn keep(share: u32, local: u32, replicas: u32, others_ready: u32) -> u32 {
    share.max(local.min(replicas.saturating_sub(others_ready)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: 8 * GIB,
            schedulable: true,
        }
    }

    fn want(name: &str, replicas: u32) -> Want {
        Want {
            name: name.into(),
            replicas,
            node_selector: skiff_spec::Labels::new(),
            memory: 128 << 20,
        }
    }

    fn counts(placed: &BTreeMap<String, BTreeMap<String, u32>>, d: &str) -> Vec<u32> {
        let mut v: Vec<u32> = placed[d].values().copied().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn pods_spread_one_per_node_and_agree_everywhere() {
        let nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let placed = place(&[want("web", 3)], &nodes, &Current::new());
        assert_eq!(counts(&placed, "web"), [1, 1, 1]);
        // Another node, with the members listed in another order, computes the same.
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        assert_eq!(place(&[want("web", 3)], &shuffled, &Current::new()), placed);
        // Five replicas on three nodes: 2, 2, 1.
        assert_eq!(
            counts(&place(&[want("web", 5)], &nodes, &Current::new()), "web"),
            [1, 2, 2]
        );
    }

    #[test]
    fn pods_stay_where_they_run_and_move_only_when_needed() {
        let three = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let wants: Vec<Want> = (0..40).map(|i| want(&format!("d{i}"), 1)).collect();
        let before = place(&wants, &three, &Current::new());
        let on = |p: &BTreeMap<String, BTreeMap<String, u32>>, d: &str| {
            p[d].keys().next().cloned().unwrap()
        };
        // c dies: only c's pods move.
        let after = place(&wants, &three[..2], &before);
        for w in &wants {
            if on(&before, &w.name) != "c" {
                assert_eq!(
                    on(&before, &w.name),
                    on(&after, &w.name),
                    "{} moved",
                    w.name
                );
            }
        }
        // d joins: nothing running moves to it; a new Deployment may go there.
        let mut four = three.clone();
        four.push(node("d", &[]));
        let joined = place(&wants, &four, &before);
        assert_eq!(joined, before, "pods moved to a node that joined");
        let mut more = wants.clone();
        more.extend((40..80).map(|i| want(&format!("d{i}"), 1)));
        let next = place(&more, &four, &before);
        assert!(more[40..].iter().any(|w| on(&next, &w.name) == "d"));
        // Where pods run unevenly (a node came back after the others took its pod),
        // they spread again: one moves, the others stay.
        let web = [want("web", 3)];
        let uneven: Current = BTreeMap::from([(
            "web".into(),
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)]),
        )]);
        let spread = place(&web, &three, &uneven);
        assert_eq!(
            spread["web"],
            BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
        );
        // Surplus (a rollout's surge) does not make placement place more.
        let surged: Current = BTreeMap::from([(
            "web".into(),
            BTreeMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]),
        )]);
        assert_eq!(place(&web, &three, &surged)["web"].values().sum::<u32>(), 3);
    }

    #[test]
    fn selectors_cordons_memory_and_zones_are_respected() {
        let mut nodes = vec![
            node("a", &[("zone", "eu"), ("disk", "ssd")]),
            node("b", &[("zone", "eu")]),
            node("c", &[("zone", "us"), ("disk", "ssd")]),
        ];
        // nodeSelector: only a and c.
        let mut ssd = want("db", 4);
        ssd.node_selector.insert("disk".into(), "ssd".into());
        let placed = place(&[ssd.clone()], &nodes, &Current::new());
        assert_eq!(placed["db"].keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(counts(&placed, "db"), [2, 2]);
        // Zones: two pods go one to eu and one to us, whichever eu node ranks first.
        let placed = place(&[want("web", 2)], &nodes, &Current::new());
        assert_eq!(placed["web"].get("c"), Some(&1));
        // A cordoned node gets nothing.
        nodes[2].schedulable = false;
        assert_eq!(
            place(&[ssd.clone()], &nodes, &Current::new())["db"]
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );
        // Memory: a node with room for one pod takes one, the rest wait.
        nodes[0].capacity = 200 << 20;
        assert_eq!(counts(&place(&[ssd], &nodes, &Current::new()), "db"), [1]);
        // No eligible node at all: nothing placed, nothing panics.
        assert!(place(&[want("x", 3)], &[], &Current::new())["x"].is_empty());
    }

    #[test]
    fn a_node_keeps_its_pods_until_the_others_are_ready() {
        // Share dropped from 2 to 1 but the others have only 1 of 3 ready: keep 2.
        assert_eq!(keep(1, 2, 3, 1), 2);
        // Once they have 2 ready, give the pod up.
        assert_eq!(keep(1, 2, 3, 2), 1);
        // Never more than it has, never less than its share.
        assert_eq!(keep(1, 0, 3, 0), 1);
        assert_eq!(keep(2, 5, 3, 0), 3);
    }
}
