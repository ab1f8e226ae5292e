//! A pod's probes: readiness until it passes (then its container takes requests), then
//! liveness, restarting the pod after `failureThreshold` failures in a row.

use super::*;

/// One HTTP GET of a probe through the container's workload: 2xx and 3xx pass.
pub(super) async fn http_probe(container: &Container, probe: &Probe) -> bool {
    let Some(get) = &probe.http_get else {
        return true;
    };
    let path = get.path.as_deref().unwrap_or("/");
    let Ok(req) = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "skiff-probe/1")
        .body(http_body_util::Empty::<Bytes>::new())
    else {
        return false;
    };
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let info = RequestInfo {
        remote: local,
        local,
    };
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    match tokio::time::timeout(timeout, container.workload().handle(req, &info)).await {
        Ok(Ok(response)) => (200..400).contains(&response.status().as_u16()),
        _ => false,
    }
}

pub(super) fn period(probe: &Probe) -> Duration {
    Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64)
}

/// A pod's probes: readiness until it passes (then the container takes requests), then
/// liveness, restarting the pod after `failureThreshold` failures in a row.
pub(super) async fn watch_pod(
    table: Arc<PodTable>,
    pod: String,
    container: Arc<Container>,
    spec: k8s::Container,
    ready_at_start: bool,
    stop: CancellationToken,
) {
    let readiness = spec.readiness_probe.filter(|p| p.http_get.is_some());
    let liveness = spec.liveness_probe.filter(|p| p.http_get.is_some());
    let at_start = ready_at_start && readiness.is_none();
    let pause = |d: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    if let Some(p) = &readiness {
        let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        if !pause(delay).await {
            return;
        }
    }
    if !at_start {
        loop {
            let ok = match &readiness {
                Some(p) => http_probe(&container, p).await,
                None => container.workload().accepts().await,
            };
            if ok {
                break;
            }
            let wait = readiness
                .as_ref()
                .map_or(Duration::from_millis(100), period);
            if !pause(wait).await {
                return;
            }
        }
    }
    if stop.is_cancelled() || container.transition(ContainerState::Ready).is_err() {
        return;
    }
    table.ready(&pod, &container.id);
    let Some(live) = liveness else {
        return;
    };
    let threshold = live.failure_threshold.unwrap_or(3).max(1);
    let mut failures = 0;
    while pause(period(&live)).await {
        if http_probe(&container, &live).await {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures >= threshold {
            table.restart(
                &pod,
                &container.id,
                "Unhealthy",
                format!("liveness probe failed {failures} times"),
            );
            return;
        }
    }
}
