//! Route labels: what the routing table knows a Service, an app or a container by.

/// The prefix of a Service's local-only route: what a request another node forwarded
/// is served from (`:` is not in any Service name, so it cannot collide).
pub(crate) const LOCAL_ROUTE: &str = "local:";

/// The local-only route of Service `name`.
pub(crate) fn local(name: &str) -> String {
    format!("{LOCAL_ROUTE}{name}")
}
