//! The kinds served, one file each, and their registry: a line in [`kinds!`] below
//! makes a kind's module, its [`Kind`] variant and its place in discovery (in the order
//! listed). Everything else about a kind is its [`Served`] implementation.

mod kind;

pub(crate) use kind::{Answer, Column, READ, Resource, Served, SubRequest, WRITE};

/// Declares the kinds: `Variant => module::Type`, where `Type` is a unit struct of
/// `module` implementing [`Served`].
macro_rules! kinds {
    ($($variant:ident => $module:ident :: $ty:ident,)*) => {
        $(pub(crate) mod $module;)*

        /// A kind served: a plain key (the store keeps objects by it) that leads to
        /// its [`Served`] description.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Kind {
            $($variant,)*
        }

        impl Kind {
            /// Every kind, in discovery's order.
            pub(crate) const ALL: &[Kind] = &[$(Kind::$variant,)*];

            /// What the generic code asks of this kind.
            pub(crate) fn served(self) -> &'static dyn Served {
                match self {
                    $(Kind::$variant => &$module::$ty,)*
                }
            }
        }
    };
}

kinds! {
    Deployment => deployment::Deployment,
    ReplicaSet => replicaset::ReplicaSet,
    Pod => pod::Pod,
    Service => service::Service,
    Node => node::Node,
    Event => event::Event,
    Namespace => namespace::Namespace,
    Endpoints => endpoints::Endpoints,
    EndpointSlice => endpointslice::EndpointSlice,
}

impl Kind {
    /// Its discovery entry.
    pub(crate) fn resource(self) -> &'static Resource {
        self.served().resource()
    }
}

/// Every resource, in discovery's order.
pub(crate) fn all() -> impl Iterator<Item = &'static Resource> {
    Kind::ALL.iter().map(|k| k.resource())
}

/// The groups served (`""`: the core group, at `/api/v1`), each once, in the order
/// their first kind is listed.
pub(crate) fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in all() {
        if !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// `v1`, `apps/v1`, `discovery.k8s.io/v1`: the version served of `group`.
pub(crate) fn group_version(group: &str) -> &'static str {
    all()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_describes_itself_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &kind in Kind::ALL {
            let r = kind.resource();
            assert_eq!(r.kind, kind, "{kind:?}'s resource is another kind's");
            let expected = if r.group.is_empty() {
                "v1".to_string()
            } else {
                format!("{}/v1", r.group)
            };
            assert_eq!(r.api_version, expected, "{kind:?}");
            assert!(seen.insert((r.group, r.plural)), "{} twice", r.plural);
            assert_eq!(kind.served().columns().len(), {
                kind.served().cells(&serde_json::json!({})).len()
            });
        }
        assert_eq!(groups(), ["apps", "", "discovery.k8s.io"]);
    }
}
