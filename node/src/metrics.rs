//! Prometheus metrics: per-app requests, durations, instance starts and traps; compile
//! times; process figures read from /proc at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    app: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    app: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    service: String,
    endpoint: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompileLabels {
    cache: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Apps (and Services) with series of their own; the requests of any beyond count
/// under [`OTHER`], so a scrape of a node with 10,000 apps stays the size of one with
/// a few hundred.
pub const MAX_LABELLED: usize = 256;

/// The label value the apps (Services, endpoints) past [`MAX_LABELLED`] share.
pub const OTHER: &str = "_other";

/// The names that have series of their own: the first [`MAX_LABELLED`] to be seen.
#[derive(Default)]
struct Labelled(std::sync::Mutex<std::collections::HashSet<String>>);

impl Labelled {
    /// `name`, or [`OTHER`] once the series are full.
    fn label(&self, name: &str) -> String {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains(name) {
            return name.to_string();
        }
        if names.len() < MAX_LABELLED {
            names.insert(name.to_string());
            return name.to_string();
        }
        OTHER.to_string()
    }

    /// Whether `name` has series of its own.
    fn has(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    durations: HistogramFamily<AppLabel>,
    instance_starts: Family<AppLabel, Counter>,
    traps: Family<TrapLabels, Counter>,
    compiles: HistogramFamily<CompileLabels>,
    service_requests: Family<ClassLabels, Counter>,
    service_durations: HistogramFamily<ServiceLabel>,
    service_retries: Family<ServiceLabel, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    in_flight: Family<EndpointLabels, Gauge>,
    gossip_dropped: Family<ReasonLabel, Gauge>,
    peer_pod_requests: Counter,
    /// Apps with series of their own.
    app_names: Labelled,
    /// Services with series of their own.
    service_names: Labelled,
    members: Gauge,
    apps: Gauge,
    rss: Gauge,
    vsize: Gauge,
    cpu: Gauge<f64, AtomicU64>,
    fds: Gauge,
    threads: Gauge,
}

fn request_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

fn compile_histogram() -> Histogram {
    // 1 ms .. ~130 s
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "skiff_requests",
            "Requests served by the ingress, by app and status",
            requests.clone(),
        );
        let durations: HistogramFamily<AppLabel> = Family::new_with_constructor(request_histogram);
        registry.register(
            "skiff_request_duration_seconds",
            "Time to the response head, by app",
            durations.clone(),
        );
        let instance_starts = Family::<AppLabel, Counter>::default();
        registry.register(
            "skiff_instance_starts",
            "Wasm instances created, by app",
            instance_starts.clone(),
        );
        let traps = Family::<TrapLabels, Counter>::default();
        registry.register(
            "skiff_traps",
            "Guest traps and timeouts, by app and kind",
            traps.clone(),
        );
        let compiles: HistogramFamily<CompileLabels> =
            Family::new_with_constructor(compile_histogram);
        registry.register(
            "skiff_compile_duration_seconds",
            "Compile (cache=miss) or load (cache=hit) time",
            compiles.clone(),
        );
        let service_requests = Family::<ClassLabels, Counter>::default();
        registry.register(
            "skiff_service_requests",
            "Requests to a Service, by endpoint (pod) and status class (2xx..5xx)",
            service_requests.clone(),
        );
        let service_durations: HistogramFamily<ServiceLabel> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "skiff_service_request_duration_seconds",
            "Time to the response head, by Service",
            service_durations.clone(),
        );
        let service_retries = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "skiff_service_retries",
            "Requests retried on another endpoint, by Service",
            service_retries.clone(),
        );
        let ejections = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "skiff_service_ejections",
            "Endpoints taken out of a Service's rotation by passive health checks",
            ejections.clone(),
        );
        let in_flight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "skiff_service_in_flight",
            "Requests in flight, by Service and endpoint (at scrape time)",
            in_flight.clone(),
        );
        let gossip_dropped = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "skiff_gossip_dropped_datagrams",
            "Gossip datagrams dropped since start, by reason (forged, truncated, stale, garbled, oversize)",
            gossip_dropped.clone(),
        );
        let peer_pod_requests = Counter::default();
        registry.register(
            "skiff_peer_pod_requests",
            "Requests for this node's pods answered to peers (each peer follows them with one at a time, however many read them there)",
            peer_pod_requests.clone(),
        );
        let members = Gauge::default();
        registry.register(
            "skiff_cluster_live_members",
            "Members of the cluster this node hears from, itself included",
            members.clone(),
        );
        let apps = Gauge::default();
        registry.register("skiff_apps", "Apps deployed on this node", apps.clone());
        let rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size",
            rss.clone(),
        );
        let vsize = Gauge::default();
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size",
            vsize.clone(),
        );
        let cpu = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent",
            cpu.clone(),
        );
        let fds = Gauge::default();
        registry.register("process_open_fds", "Open file descriptors", fds.clone());
        let threads = Gauge::default();
        registry.register("process_threads", "OS threads", threads.clone());
        let start_time: Gauge = Gauge::default();
        registry.register(
            "process_start_time_seconds",
            "Start time since the Unix epoch",
            start_time.clone(),
        );
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        Self {
            registry,
            requests,
            durations,
            instance_starts,
            traps,
            compiles,
            service_requests,
            service_durations,
            service_retries,
            ejections,
            in_flight,
            gossip_dropped,
            peer_pod_requests,
            app_names: Labelled::default(),
            service_names: Labelled::default(),
            members,
            apps,
            rss,
            vsize,
            cpu,
            fds,
            threads,
        }
    }
}

impl Metrics {
    /// Records one request's outcome.
    pub fn request(&self, app: &str, status: u16, seconds: f64) {
        let app = self.app_names.label(app);
        self.durations
            .get_or_create(&AppLabel { app: app.clone() })
            .observe(seconds);
        self.requests
            .get_or_create(&StatusLabels { app, status })
            .inc();
    }

    /// Records one request to a Service, answered by `endpoint`.
    pub fn service_request(&self, service: &str, endpoint: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let (service, endpoint) = self.service_labels(service, endpoint);
        self.service_durations
            .get_or_create(&ServiceLabel {
                service: service.clone(),
            })
            .observe(seconds);
        self.service_requests
            .get_or_create(&ClassLabels {
                service,
                endpoint,
                class,
            })
            .inc();
    }

    /// Records a retry on another endpoint.
    pub fn service_retry(&self, service: &str) {
        self.service_retries
            .get_or_create(&ServiceLabel {
                service: self.service_names.label(service),
            })
            .inc();
    }

    /// Records an endpoint's ejection.
    pub fn ejection(&self, service: &str, endpoint: &str) {
        let (service, endpoint) = self.service_labels(service, endpoint);
        self.ejections
            .get_or_create(&EndpointLabels { service, endpoint })
            .inc();
    }

    /// The labels of `service`'s `endpoint`: both [`OTHER`] for a Service past
    /// [`MAX_LABELLED`].
    fn service_labels(&self, service: &str, endpoint: &str) -> (String, String) {
        let service = self.service_names.label(service);
        let endpoint = if service == OTHER {
            OTHER.to_string()
        } else {
            endpoint.to_string()
        };
        (service, endpoint)
    }

    /// Drops the series of an endpoint (a pod) that is gone, for each of `services`:
    /// pods come and go with every rollout, and their series must not pile up.
    pub fn forget_endpoint<'a>(&self, endpoint: &str, services: impl IntoIterator<Item = &'a str>) {
        for service in services {
            for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                self.service_requests.remove(&ClassLabels {
                    service: service.to_string(),
                    endpoint: endpoint.to_string(),
                    class,
                });
            }
            self.ejections.remove(&EndpointLabels {
                service: service.to_string(),
                endpoint: endpoint.to_string(),
            });
        }
    }

    /// Counts a peer's request for this node's pods.
    pub fn peer_pod_request(&self) {
        self.peer_pod_requests.inc();
    }

    /// Sets the gossip figures (at scrape time).
    pub fn set_gossip(&self, dropped: impl IntoIterator<Item = (&'static str, u64)>, live: usize) {
        for (reason, n) in dropped {
            self.gossip_dropped
                .get_or_create(&ReasonLabel { reason })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.members.set(live as i64);
    }

    /// Sets the requests in flight of every Service's endpoints (at scrape time; the
    /// series of endpoints that are gone are dropped).
    pub fn set_in_flight(&self, now: impl IntoIterator<Item = (String, String, u32)>) {
        self.in_flight.clear();
        let mut other = 0i64;
        for (service, endpoint, n) in now {
            if self.service_names.has(&service) {
                self.in_flight
                    .get_or_create(&EndpointLabels { service, endpoint })
                    .set(i64::from(n));
            } else {
                other += i64::from(n);
            }
        }
        if other > 0 {
            self.in_flight
                .get_or_create(&EndpointLabels {
                    service: OTHER.into(),
                    endpoint: OTHER.into(),
                })
                .set(other);
        }
    }

    /// Records an instance creation.
    pub fn instance_start(&self, app: &str) {
        self.instance_starts
            .get_or_create(&AppLabel {
                app: self.app_names.label(app),
            })
            .inc();
    }

    /// Records a trap (or timeout) of kind `kind`.
    pub fn trap(&self, app: &str, kind: &str) {
        self.traps
            .get_or_create(&TrapLabels {
                app: self.app_names.label(app),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Records a compilation or cache load.
    pub fn compile(&self, from_cache: bool, seconds: f64) {
        let cache = if from_cache { "hit" } else { "miss" };
        self.compiles
            .get_or_create(&CompileLabels {
                cache: cache.into(),
            })
            .observe(seconds);
    }

    /// Sets the number of apps.
    pub fn set_apps(&self, n: usize) {
        self.apps.set(n as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.read_process();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    fn read_process(&self) {
        let page = 4096i64;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let mut f = statm
                .split_whitespace()
                .map(|x| x.parse::<i64>().unwrap_or(0));
            self.vsize.set(f.next().unwrap_or(0) * page);
            self.rss.set(f.next().unwrap_or(0) * page);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime are 14th and
            // 15th overall, num_threads the 20th, in clock ticks of 1/100 s on Linux.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                self.cpu.set((ticks(11) + ticks(12)) / 100.0);
                self.threads.set(ticks(17) as i64);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        let m = Metrics::default();
        m.request("hello", 200, 0.002);
        m.request("hello", 504, 2.0);
        m.trap("hello", "memory_limit");
        m.instance_start("hello");
        m.compile(false, 0.5);
        m.service_request("web", "web-abc-1", 503, 0.1);
        m.service_retry("web");
        m.ejection("web", "web-abc-1");
        m.set_in_flight([("web".to_string(), "web-abc-2".to_string(), 3)]);
        m.service_request("web", "web-gone-1", 200, 0.1);
        m.ejection("web", "web-gone-1");
        m.forget_endpoint("web-gone-1", ["web"]);
        let text = m.render();
        assert!(
            !text.contains("web-gone-1"),
            "a gone pod's series are dropped: {text}"
        );
        assert!(
            text.contains(
                r#"skiff_service_requests_total{service="web",endpoint="web-abc-1",class="5xx"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"skiff_service_retries_total{service="web"} 1"#));
        assert!(
            text.contains(r#"skiff_service_ejections_total{service="web",endpoint="web-abc-1"} 1"#)
        );
        assert!(text.contains(r#"skiff_service_in_flight{service="web",endpoint="web-abc-2"} 3"#));
        assert!(
            text.contains(r#"skiff_requests_total{app="hello",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"skiff_requests_total{app="hello",status="504"} 1"#));
        assert!(text.contains(r#"skiff_traps_total{app="hello",kind="memory_limit"} 1"#));
        assert!(text.contains(r#"skiff_instance_starts_total{app="hello"} 1"#));
        assert!(text.contains(r#"skiff_request_duration_seconds_count{app="hello"} 2"#));
        assert!(text.contains(r#"skiff_compile_duration_seconds_count{cache="miss"} 1"#));
        let rss_line = text
            .lines()
            .find(|l| l.starts_with("process_resident_memory_bytes "))
            .unwrap();
        let rss: i64 = rss_line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(rss > 1 << 20, "{rss_line}");
    }

    #[test]
    fn a_scrape_of_ten_thousand_apps_has_series_for_the_first_few_hundred() {
        let m = Metrics::default();
        for i in 0..10_000 {
            let app = format!("app{i}");
            m.request(&app, 200, 0.001);
            m.service_request(&app, &format!("{app}-pod"), 200, 0.001);
        }
        let text = m.render();
        let labelled = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(labelled("skiff_requests_total{"), MAX_LABELLED + 1);
        assert!(
            text.contains(&format!(
                "skiff_requests_total{{app=\"{OTHER}\",status=\"200\"}} {}",
                10_000 - MAX_LABELLED
            )),
            "{text}"
        );
        assert!(text.contains("app=\"app255\"") && !text.contains("app=\"app256\""));
        assert!(
            text.len() < 1 << 20,
            "a scrape stays small: {} bytes",
            text.len()
        );
    }
}
