//! [`SortedMap`]: the map behind labels, selectors, annotations and resource lists.
//!
//! A node holds thousands of objects, each with a few small maps (its labels, its
//! selector, its template's labels, ...). A `BTreeMap` allocates a whole node for its
//! first entry: 544 bytes for one `String` pair, most of it empty. These maps hold one
//! to a handful of entries, so a sorted `Vec` of pairs does the same job in the bytes the
//! pairs take, iterates in the same (key) order, and serializes to the same JSON, so a
//! template hashes the same in either.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Labels, annotations, selectors: string to string.
pub type Labels = SortedMap<Str, Str>;

/// A label's key or value: up to 24 bytes kept inline, no allocation. A node holds a
/// few labels per object (`app: <name>` in the Deployment, its selector, its
/// template, the Service's selector, each pod, each index of them): as `String`s each
/// part of each pair was an allocation of its own.
pub type Str = compact_str::CompactString;

/// A map kept as a `Vec` of pairs sorted by key: `BTreeMap`'s order and lookups (by
/// binary search) at the size of its entries. Made for small maps: an insert moves the
/// entries after it, so building one entry by entry costs O(n^2); collecting or
/// deserializing one sorts once.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K, V> SortedMap<K, V> {
    /// An empty map (no allocation).
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter(self.entries.iter())
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator + Clone {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator + Clone {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value under `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value under `key`, to change.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                // Small maps grow by one: a map of one or two pairs (most labels and
                // annotations) would otherwise hold room for four.
                if self.entries.len() == self.entries.capacity() && self.entries.len() < 8 {
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Sorts `entries` by key; of equal keys the last wins, as inserting them one by
    /// one into a map would leave. O(n log n) whatever the input.
    fn from_unsorted(mut entries: Vec<(K, V)>) -> Self {
        // A stable sort keeps equal keys in their order; reversed, the last of each
        // run comes first and `dedup` keeps the first.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.reverse();
        entries.dedup_by(|later, kept| later.0 == kept.0);
        entries.reverse();
        entries.shrink_to_fit();
        Self { entries }
    }
}

/// Iterates a [`SortedMap`] by reference.
#[derive(Clone, Debug)]
pub struct Iter<'a, K, V>(std::slice::Iter<'a, (K, V)>);

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_unsorted(iter.into_iter().collect())
    }
}

impl<K: Ord, V> Extend<(K, V)> for SortedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.extend(iter);
        *self = Self::from_unsorted(entries);
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for SortedMap<K, V> {
    fn from(entries: [(K, V); N]) -> Self {
        Self::from_unsorted(entries.into())
    }
}

impl<K: Ord, V> From<std::collections::BTreeMap<K, V>> for SortedMap<K, V> {
    fn from(map: std::collections::BTreeMap<K, V>) -> Self {
        // Already sorted and unique.
        Self {
            entries: map.into_iter().collect(),
        }
    }
}

impl<K: Serialize, V: Serialize> Serialize for SortedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for SortedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = SortedMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // The hint comes from the input: trust it only so far.
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(SortedMap::from_unsorted(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn behaves_as_a_btreemap_on_the_same_operations() {
        let input = pairs(&[("b", "1"), ("a", "2"), ("c", "3"), ("a", "4"), ("b", "5")]);
        let ours: SortedMap<String, String> = input.clone().into_iter().collect();
        let theirs: BTreeMap<String, String> = input.into_iter().collect();
        assert!(ours.iter().eq(theirs.iter()), "same entries, same order");
        assert_eq!(
            ours.get("a").map(String::as_str),
            Some("4"),
            "the last wins"
        );

        let mut ours = ours;
        let mut theirs = theirs;
        assert_eq!(
            ours.insert("aa".into(), "6".into()),
            theirs.insert("aa".into(), "6".into())
        );
        assert_eq!(
            ours.insert("c".into(), "7".into()),
            theirs.insert("c".into(), "7".into())
        );
        assert_eq!(ours.remove("b"), theirs.remove("b"));
        assert_eq!(ours.remove("zz"), theirs.remove("zz"));
        ours.extend(pairs(&[("d", "8"), ("a", "9")]));
        theirs.extend(pairs(&[("d", "8"), ("a", "9")]));
        assert!(ours.iter().eq(theirs.iter()));
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.contains_key("aa") && !ours.contains_key("b"));
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&theirs).unwrap(),
            "the same JSON, so the same template hash"
        );
    }

    #[test]
    fn deserializes_any_order_and_duplicates_as_a_map_would() {
        let ours: SortedMap<String, String> =
            serde_json::from_str(r#"{"z":"1","a":"2","z":"3"}"#).unwrap();
        let theirs: BTreeMap<String, String> =
            serde_json::from_str(r#"{"z":"1","a":"2","z":"3"}"#).unwrap();
        assert!(ours.iter().eq(theirs.iter()));
        assert!(serde_json::from_str::<Labels>(r#"["a"]"#).is_err());
        assert!(serde_json::from_str::<Labels>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn small_maps_take_only_the_room_their_pairs_need() {
        let mut one = Labels::new();
        one.insert("app".into(), "web".into());
        assert_eq!(one.entries.capacity(), 1);
        one.insert("pod-template-hash".into(), "abc".into());
        assert_eq!(one.entries.capacity(), 2);
        let read: Labels = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(read.entries.capacity(), 2);
        assert_eq!(
            serde_json::to_string(&read).unwrap(),
            r#"{"a":"2","b":"3"}"#
        );
        // Larger ones grow as a Vec does: n inserts are not n reallocations.
        let mut many = Labels::new();
        for i in 0..100 {
            many.insert(format!("k{i:03}").into(), Str::default());
        }
        assert!(many.entries.capacity() > 100 && many.entries.capacity() < 200);
    }

    #[test]
    fn many_entries_are_sorted_once() {
        // A hostile manifest with many labels costs a sort, not n inserts.
        let many: Labels = (0..100_000)
            .rev()
            .map(|i| (format!("k{i:06}").into(), i.to_string().into()))
            .collect();
        assert_eq!(many.len(), 100_000);
        assert_eq!(many.keys().next().map(Str::as_str), Some("k000000"));
        assert_eq!(many.get("k099999").map(Str::as_str), Some("99999"));
    }
}
