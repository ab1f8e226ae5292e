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
struct CompileLabels {
    cache: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    durations: HistogramFamily<AppLabel>,
    instance_starts: Family<AppLabel, Counter>,
    traps: Family<TrapLabels, Counter>,
    compiles: HistogramFamily<CompileLabels>,
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
        self.requests
            .get_or_create(&StatusLabels {
                app: app.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&AppLabel {
                app: app.to_string(),
            })
            .observe(seconds);
    }

    /// Records an instance creation.
    pub fn instance_start(&self, app: &str) {
        self.instance_starts
            .get_or_create(&AppLabel {
                app: app.to_string(),
            })
            .inc();
    }

    /// Records a trap (or timeout) of kind `kind`.
    pub fn trap(&self, app: &str, kind: &str) {
        self.traps
            .get_or_create(&TrapLabels {
                app: app.to_string(),
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
        let text = m.render();
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
}
