//! End-to-end tests: the real `skiff` binary, real sockets, real HTTP.

mod harness;

mod api;
mod attacks;
mod bounds;
mod cli;
mod cluster;
mod containers;
mod docker;
mod hostile;
mod images;
mod kinds;
mod kube;
mod kubectl;
mod lifecycle;
mod netns;
mod observe;
mod oci;
mod registry;
mod trust;
