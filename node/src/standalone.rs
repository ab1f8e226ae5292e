//! `skiff run` containers: the same [`Container`] object a deployment's replicas are,
//! routed by name through the ingress like them, plus what `docker run` gives a single
//! container: an id, published host ports, a restart policy, and a stop/start lifecycle
//! that survives node restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_runtime::LogBook;
use skiff_runtime::oci::Exit;
use skiff_spec::api::ContainerInfo;
use skiff_spec::{AppKind, AppName, RestartPolicy, RunParams};

use crate::restart::Backoff;
use tokio::sync::{MutexGuard, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::container::Container;
use crate::desired::DesiredStore;
use crate::error::AppError;
use crate::ids::new_id;
use crate::images::Images;
use crate::ingress::{self, Ingress};
use crate::launcher::Launcher;
use crate::state::{ContainerRecord, OciOptions, StateStore};

pub(crate) mod events;
mod views;

/// Lines of output kept per container.
const LOG_LINES: usize = 2000;

/// What happens to containers behind the API's back, handled by
/// [`Standalone::run_exit_loop`].
enum Event {
    /// A Linux container's process ended.
    Exited {
        /// The container (record id).
        id: String,
        /// Which start of it (the Container object's id).
        instance: String,
        /// How it ended.
        exit: Exit,
    },
    /// A restart the policy asked for, after its back-off.
    Restart {
        /// The container (record id).
        id: String,
    },
}

/// What the Docker API shows of Deployments' pods beside containers, and what they
/// hold: the reconciler's pod table answers.
pub(crate) trait Pods: Send + Sync {
    /// The running pod named (or id-prefixed, 4+ digits) `key`, and its Deployment.
    fn pod_container(&self, key: &str) -> Option<(Arc<Container>, String)>;
    /// Every running pod: its container, Deployment, image and limits.
    fn running_pods(
        &self,
    ) -> Vec<(
        Arc<Container>,
        String,
        skiff_spec::Digest,
        skiff_spec::Limits,
    )>;
    /// Every pod with a container (running or terminating).
    fn pod_containers(&self) -> Vec<Arc<Container>>;
    /// Deployment `deployment`'s log book.
    fn log(&self, deployment: &str) -> Option<Arc<LogBook>>;
    /// The images pods run, with the pods' names.
    fn images(&self) -> Vec<(skiff_spec::Digest, String)>;
}

/// What the containers' service works with.
pub(crate) struct Settings {
    pub(crate) images: Arc<Images>,
    pub(crate) launcher: Arc<Launcher>,
    pub(crate) ingress: Arc<Ingress>,
    pub(crate) state: Arc<StateStore>,
    /// Deployments and Services: their names are taken.
    pub(crate) desired: Arc<DesiredStore>,
    /// Pods, which the Docker API shows beside containers.
    pub(crate) pods: Arc<dyn Pods>,
    /// The node's shutdown: published-port listeners stop with it.
    pub(crate) shutdown: CancellationToken,
    /// How long stops wait for requests in flight.
    pub(crate) drain: Duration,
}

/// `skiff run` (and `docker run`) containers: made, started, stopped, restarted by
/// their policy, removed; their records survive node restarts.
pub(crate) struct Standalone {
    /// By id.
    entries: tokio::sync::Mutex<HashMap<String, Entry>>,
    /// What happened to them, for `docker events`.
    pub(crate) events: events::ContainerEvents,
    images: Arc<Images>,
    launcher: Arc<Launcher>,
    ingress: Arc<Ingress>,
    state: Arc<StateStore>,
    desired: Arc<DesiredStore>,
    pods: Arc<dyn Pods>,
    shutdown: CancellationToken,
    drain: Duration,
    exits: crate::launcher::Inbox<Event>,
}

/// One `skiff run` container: its record and, while running, its container and ports.
struct Entry {
    record: ContainerRecord,
    log: Arc<LogBook>,
    running: Option<Running>,
    /// Quick failures in a row, for the restart back-off.
    restarts: u32,
    /// `None` while it runs, its exit code once it stopped: what `wait` and `logs -f`
    /// watch. Receivers keep the last code after the container is removed (`--rm`).
    exit: watch::Sender<Option<i32>>,
}

struct Running {
    container: Arc<Container>,
    /// Published-port listeners; cancelled on stop.
    ports: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
}

impl Running {
    /// Lets requests in flight finish (up to `grace`) and the listeners wind down; a
    /// Linux container then gets SIGTERM, SIGKILL after `grace`, and is cleaned up.
    /// Returns how it exited, for Linux containers.
    async fn finish(self, grace: std::time::Duration) -> Option<Exit> {
        let exit = crate::launcher::retire(&self.container, grace, grace).await;
        for l in self.listeners {
            let _ = l.await;
        }
        exit
    }
}

/// A just-started container's output and exit, for `run` without `-d`.
pub struct Attached {
    /// Lines it wrote before the subscription.
    pub past: Vec<skiff_spec::api::LogLine>,
    /// Every line after them.
    pub lines: tokio::sync::broadcast::Receiver<skiff_spec::api::LogLine>,
    /// Its exit code once it stops.
    pub exit: watch::Receiver<Option<i32>>,
}

impl Standalone {
    pub(crate) fn new(settings: Settings) -> Self {
        let Settings {
            images,
            launcher,
            ingress,
            state,
            desired,
            pods,
            shutdown,
            drain,
        } = settings;
        Self {
            entries: tokio::sync::Mutex::default(),
            events: events::ContainerEvents::default(),
            images,
            launcher,
            ingress,
            state,
            desired,
            pods,
            shutdown,
            drain,
            exits: crate::launcher::Inbox::new(),
        }
    }

    /// Handles Linux containers' exits and restarts until the node stops. Run once, by
    /// the node.
    pub(crate) async fn run_exit_loop(&self, shutdown: CancellationToken) {
        self.exits.run(shutdown, |ev| self.on_exit(ev)).await;
    }

    /// Whether a container is named `name`.
    pub(crate) async fn has_name(&self, name: &str) -> bool {
        self.entries.lock().await.values().any(|c| c.name() == name)
    }

    /// Every container's image and name.
    pub(crate) async fn images_in_use(&self) -> Vec<(skiff_spec::Digest, String)> {
        self.entries
            .lock()
            .await
            .values()
            .map(|c| (c.image(), c.name().to_string()))
            .collect()
    }

    /// Collects `image` (and what only it refers to) if nothing holds it any more
    /// (after a container that ran it was removed).
    async fn collect_image(&self, image: skiff_spec::Digest) {
        let _guard = self.images.exclusive().await;
        self.images
            .collect(
                std::collections::BTreeSet::from([image]),
                &self.desired,
                async || {
                    let mut in_use: std::collections::BTreeSet<skiff_spec::Digest> =
                        self.pods.images().into_iter().map(|(d, _)| d).collect();
                    in_use.extend(self.entries.lock().await.values().map(Entry::image));
                    in_use
                },
            )
            .await;
    }

    /// Tells `wait`, `logs -f` and `docker events` that a container stopped.
    fn ended(&self, entry: &Entry) {
        entry.ended();
        let code = entry.record.exit_code.unwrap_or(0);
        self.events.record("die", &entry.record, Some(code));
    }
}

impl Entry {
    fn new(record: ContainerRecord) -> Self {
        let exit = watch::Sender::new(record.exit_code.or(Some(0)));
        Self {
            record,
            log: LogBook::new(LOG_LINES),
            running: None,
            restarts: 0,
            exit,
        }
    }

    /// Tells `wait` and `logs -f` that it stopped, with its (final) exit code.
    fn ended(&self) {
        self.exit
            .send_replace(Some(self.record.exit_code.unwrap_or(0)));
    }

    fn name(&self) -> &str {
        self.record.spec.name.as_str()
    }

    fn image(&self) -> skiff_spec::Digest {
        self.record.spec.image
    }
}

/// Docker-like generated names, made DNS labels since names are host labels here.
fn generated_name(taken: impl Fn(&str) -> bool) -> String {
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nifty",
        "quiet", "vivid", "witty", "zen",
    ];
    const NOUNS: &[&str] = &[
        "turing", "hopper", "lovelace", "knuth", "ritchie", "thompson", "liskov", "dijkstra",
        "hamilton", "curie", "noether", "shannon",
    ];
    loop {
        let mut r = [0u8; 3];
        let _ = getrandom::fill(&mut r);
        let mut name = format!(
            "{}-{}",
            ADJECTIVES[r[0] as usize % ADJECTIVES.len()],
            NOUNS[r[1] as usize % NOUNS.len()]
        );
        if taken(&name) {
            name = format!("{name}-{}", r[2]);
        }
        if !taken(&name) {
            return name;
        }
    }
}

impl Standalone {
    /// Creates and starts a container from an image (`docker run -d`); with `attach`,
    /// also its output from the first line on and its exit, taken before anything else
    /// (an exit, a `--rm`) can happen to it.
    pub async fn run(
        &self,
        req: RunParams,
        attach: bool,
    ) -> Result<(ContainerInfo, Option<Attached>), AppError> {
        self.make_container(req, true, attach).await
    }

    /// `docker create`: the container, made and recorded but not started.
    pub async fn create_container(&self, req: RunParams) -> Result<ContainerInfo, AppError> {
        Ok(self.make_container(req, false, false).await?.0)
    }

    async fn make_container(
        &self,
        req: RunParams,
        start: bool,
        attach: bool,
    ) -> Result<(ContainerInfo, Option<Attached>), AppError> {
        let images = self.images.store().clone();
        let reference = req.image.clone();
        let digest = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| AppError::not_found(e.to_string()))?;
        let summary = self.images.summary(digest).await?;
        // Compile (or extract) before taking the locks, so other deploys do not wait on
        // it; holding the result keeps it in the runtime's cache for the start below.
        let _prepared = self.images.prepare(&summary).await?;
        let _guard = self.images.exclusive().await;
        let mut standalone = self.entries.lock().await;
        let taken = |n: &str| {
            self.desired.read(|s| s.state.deployments.contains_key(n))
                || standalone
                    .values()
                    .any(|s| s.record.spec.name.as_str() == n)
                || self.desired.read(|s| s.state.services.contains_key(n))
        };
        let name = match req.name {
            Some(n) => {
                let name = AppName::new(n)
                    .map_err(|e| AppError::invalid("invalid_name", e.to_string()))?;
                if taken(name.as_str()) {
                    return Err(AppError::conflict(format!(
                        "the name {name} is already in use by an app, container or Service"
                    )));
                }
                name
            }
            None => AppName::new(generated_name(taken)).map_err(AppError::internal)?,
        };
        for p in &req.ports {
            if standalone
                .values()
                .any(|s| s.record.ports.iter().any(|q| q.host_port == p.host_port))
            {
                return Err(AppError::conflict(format!(
                    "host port {} is already published by another container",
                    p.host_port
                )));
            }
        }
        let memory_bytes = req.params.memory_bytes;
        let mut spec = crate::images::image_spec(req.params, &summary, name);
        match (req.entrypoint, req.args) {
            // As `docker run --entrypoint E IMAGE ARGS...`: the image's CMD goes too.
            (Some(entrypoint), args) => {
                spec.args = entrypoint
                    .into_iter()
                    .chain(args.unwrap_or_default())
                    .collect();
            }
            // As `docker run IMAGE ARGS...`: the arguments replace CMD, ENTRYPOINT stays.
            (None, Some(args)) => {
                spec.args = summary.run.entrypoint.iter().cloned().chain(args).collect();
            }
            (None, None) => {}
        }
        spec.replicas = 1;
        if spec.kind != AppKind::Oci {
            req.security
                .check_in_process(req.workdir.as_deref())
                .map_err(|e| AppError::invalid(crate::launcher::CONFIG_ERROR, e))?;
        }
        if matches!(spec.kind, AppKind::Http | AppKind::Wagi) {
            self.launcher.admit(&spec.limits)?;
        }
        let now = now_ms();
        let record = ContainerRecord {
            id: new_id(),
            spec,
            image_ref: req.image,
            ports: req.ports,
            restart: req.restart,
            oci: OciOptions {
                // Linux containers get a memory limit only when asked, as with docker run.
                memory_bytes,
                milli_cpus: req.milli_cpus,
                pids_limit: req.pids_limit,
                host_network: req.host_network,
                user: req.user,
                workdir: req.workdir,
                security: req.security,
            },
            created_ms: now,
            running: false,
            started_ms: 0,
            finished_ms: 0,
            exit_code: None,
            oom_killed: false,
            exit_error: None,
            auto_remove: req.auto_remove,
            labels: req.labels,
        };
        let mut entry = Entry::new(record);
        if start {
            self.events.record("create", &entry.record, None);
            if let Err(e) = self.start_entry(&mut entry).await {
                // It never ran and is not kept.
                self.events.record("destroy", &entry.record, None);
                return Err(e);
            }
        } else {
            self.persist(&entry.record).await?;
            self.events.record("create", &entry.record, None);
        }
        let info = self.info_of(&entry);
        // Still under the lock, which its exit must take: nothing is missed.
        let attached = attach.then(|| {
            let (past, lines) = entry.log.tail_and_subscribe(usize::MAX);
            Attached {
                past,
                lines,
                exit: entry.exit.subscribe(),
            }
        });
        info!(container = %entry.record.spec.name, id = %&entry.record.id[..12], image = %entry.record.image_ref, started = start, "container created");
        standalone.insert(entry.record.id.clone(), entry);
        Ok((info, attached))
    }

    /// Starts a stopped (or new) container: prepares its image, binds its ports, routes
    /// its name, and persists that it runs. A port that cannot be bound fails the start
    /// and leaves the container stopped.
    async fn start_entry(&self, entry: &mut Entry) -> Result<(), AppError> {
        if entry.running.is_some() {
            return Ok(());
        }
        let summary = self.images.summary(entry.record.spec.image).await?;
        let prepared = self.images.prepare(&summary).await?;
        let mut spec = entry.record.spec.clone();
        spec.replicas = 1;
        // Ports first: a taken port fails the start before anything runs.
        let addrs: Vec<std::net::SocketAddr> = entry
            .record
            .ports
            .iter()
            .map(|p| std::net::SocketAddr::new(p.host_ip, p.host_port))
            .collect();
        let bound = ingress::published::bind(&addrs)
            .await
            .map_err(|(addr, e)| AppError::conflict(format!("cannot publish {addr}: {e}")))?;
        let container = match &prepared {
            crate::images::Prepared::Oci { root } => self.start_oci(entry, &summary, root).await?,
            other => {
                let c =
                    self.launcher
                        .in_process(spec.name.to_string(), &spec, other, &entry.log)?;
                c.transition(crate::container::ContainerState::Ready)
                    .map_err(AppError::internal)?;
                Arc::new(c)
            }
        };
        let ports = self.shutdown.child_token();
        let listeners = bound.serve(&self.ingress, &container, &ports, self.drain);
        self.ingress
            .table
            .set(spec.name.as_str(), vec![container.clone()]);
        entry.record.running = true;
        entry.record.started_ms = now_ms();
        entry.record.exit_code = None;
        entry.record.oom_killed = false;
        entry.record.exit_error = None;
        self.persist(&entry.record).await?;
        entry.running = Some(Running {
            container,
            ports,
            listeners,
        });
        entry.exit.send_replace(None);
        self.events.record("start", &entry.record, None);
        Ok(())
    }

    /// Starts a Linux container with runc; its exit comes back as [`Event::Exited`].
    async fn start_oci(
        &self,
        entry: &Entry,
        summary: &skiff_image::ImageSummary,
        root: &std::path::Path,
    ) -> Result<Arc<Container>, AppError> {
        let r = &entry.record;
        let id = r.id.clone();
        self.launcher
            .start_linux(
                crate::launcher::LinuxStart {
                    id: &r.id,
                    name: r.spec.name.as_str(),
                    spec: &r.spec,
                    summary,
                    root,
                    log: &entry.log,
                    oci: &r.oci,
                    port: r.ports.first().map(|p| p.container_port),
                    ready: true,
                },
                {
                    let exits = self.exits.sender();
                    move |instance, exit| {
                        let _ = exits.send(Event::Exited { id, instance, exit });
                    }
                },
            )
            .await
    }

    /// A Linux container's process ended by itself: record it and apply the restart
    /// policy, with Docker's back-off (100 ms doubling to 10 s while it keeps failing
    /// within 10 s of starting). Exits of containers being stopped are theirs to record.
    async fn on_exit(&self, ev: Event) {
        let (id, instance, exit) = match ev {
            Event::Exited { id, instance, exit } => (id, instance, exit),
            Event::Restart { id } => {
                let mut standalone = self.entries.lock().await;
                if let Some(entry) = standalone.get_mut(&id)
                    && entry.running.is_none()
                    && entry.record.restart != RestartPolicy::No
                    && let Err(e) = self.start_entry(entry).await
                {
                    warn!(container = %entry.record.spec.name, error = %e, "container could not be restarted");
                }
                return;
            }
        };
        let mut standalone = self.entries.lock().await;
        let Some(entry) = standalone.get_mut(&id) else {
            return;
        };
        if entry
            .running
            .as_ref()
            .is_none_or(|r| r.container.id != instance)
        {
            return;
        }
        let running = entry.running.take().expect("checked");
        self.ingress.table.remove(entry.record.spec.name.as_str());
        running.ports.cancel();
        if let Some(process) = running.container.workload().oci_process() {
            process.cleanup().await;
        }
        let now = now_ms();
        let ran = Duration::from_millis(now.saturating_sub(entry.record.started_ms));
        entry.restarts = Backoff::DOCKER.count(entry.restarts, ran);
        entry.record.running = false;
        entry.record.finished_ms = now;
        entry.record.exited(&exit);
        let code = exit.code;
        info!(container = %entry.record.spec.name, code, oom_killed = exit.oom_killed, error = exit.error.as_deref().unwrap_or(""), "container exited");
        if let Err(e) = self.persist(&entry.record).await {
            warn!(error = %e, "failed to record a container's exit");
        }
        self.ended(entry);
        if entry.record.auto_remove {
            self.remove_entry(standalone, &id).await;
            return;
        }
        if entry.record.restart.restarts(Some(code)) {
            let delay = Backoff::DOCKER.delay(entry.restarts);
            let events = self.exits.sender();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = events.send(Event::Restart { id });
            });
        }
    }

    /// Stops a running container: unroutes it, closes its ports, lets requests in flight
    /// finish (up to `grace`), and records exit code 0.
    async fn stop_entry(
        &self,
        entry: &mut Entry,
        grace: std::time::Duration,
    ) -> Result<(), AppError> {
        if let Some(running) = self.begin_stop(entry).await? {
            if let Some(exit) = running.finish(grace).await {
                entry.record.exited(&exit);
                self.persist(&entry.record).await?;
            }
            self.ended(entry);
        }
        Ok(())
    }

    /// The quick half of a stop, done under the lock: no new requests reach the container
    /// (route gone, ports closed) and the record says it exited. The caller drains the
    /// returned container, preferably after releasing the lock.
    async fn begin_stop(&self, entry: &mut Entry) -> Result<Option<Running>, AppError> {
        let Some(running) = entry.running.take() else {
            return Ok(None);
        };
        self.ingress.table.remove(entry.record.spec.name.as_str());
        running.ports.cancel();
        entry.record.running = false;
        entry.record.finished_ms = now_ms();
        entry.record.exit_code = Some(0);
        self.persist(&entry.record).await?;
        Ok(Some(running))
    }

    async fn persist(&self, record: &ContainerRecord) -> Result<(), AppError> {
        let state = self.state.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || state.put_container(&record))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)
    }

    /// The id of the container named or id-prefixed by `key`.
    fn find(standalone: &HashMap<String, Entry>, key: &str) -> Result<String, AppError> {
        if let Some(s) = standalone
            .values()
            .find(|s| s.record.spec.name.as_str() == key)
        {
            return Ok(s.record.id.clone());
        }
        let matches: Vec<&String> = standalone
            .keys()
            .filter(|id| key.len() >= 4 && id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(AppError::not_found(format!("no such container: {key}"))),
            _ => Err(AppError::invalid(
                "ambiguous",
                format!("container id {key} is ambiguous; give more digits"),
            )),
        }
    }

    /// `docker stop`.
    pub async fn stop_container(
        &self,
        key: &str,
        grace: std::time::Duration,
    ) -> Result<ContainerInfo, AppError> {
        let (mut standalone, id) = self.locate(key).await?;
        let entry = standalone.get_mut(&id).expect("found");
        let running = self.begin_stop(entry).await?;
        let mut info = self.info_of(entry);
        // Drained without the lock: `ps` and the other verbs need not wait up to -t.
        drop(standalone);
        if let Some(running) = running {
            let exit = running.finish(grace).await;
            let mut standalone = self.entries.lock().await;
            if let Some(entry) = standalone.get_mut(&id)
                && entry.running.is_none()
            {
                // A Linux container's own exit code replaces the provisional 0.
                if let Some(exit) = exit {
                    entry.record.exited(&exit);
                    self.persist(&entry.record).await?;
                    info = self.info_of(entry);
                }
                self.ended(entry);
                if entry.record.auto_remove {
                    self.remove_entry(standalone, &id).await;
                }
            }
        }
        Ok(info)
    }

    /// `docker start`.
    pub async fn start_container(&self, key: &str) -> Result<ContainerInfo, AppError> {
        let (mut standalone, id) = self.locate(key).await?;
        let entry = standalone.get_mut(&id).expect("found");
        self.start_entry(entry).await?;
        Ok(self.info_of(entry))
    }

    /// `docker rm [-f]`.
    pub async fn remove_container(&self, key: &str, force: bool) -> Result<(), AppError> {
        let (mut standalone, id) = self.locate(key).await?;
        let entry = standalone.get_mut(&id).expect("found");
        if entry.running.is_some() {
            if !force {
                return Err(AppError::conflict(format!(
                    "container {} is running: stop it first or remove it with -f",
                    entry.record.spec.name
                )));
            }
            self.stop_entry(entry, std::time::Duration::ZERO).await?;
        }
        if entry.exit.borrow().is_none() {
            // Removed while another caller still stops it: its waiters get the code now.
            self.ended(entry);
        }
        self.delete_record(&id).await?;
        let entry = standalone.remove(&id).expect("found");
        self.events.record("destroy", &entry.record, None);
        info!(container = %entry.record.spec.name, "container removed");
        drop(standalone);
        self.collect_image(entry.image()).await;
        Ok(())
    }

    async fn delete_record(&self, id: &str) -> Result<(), AppError> {
        let state = self.state.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || state.delete_container(&id))
            .await
            .map_err(AppError::internal)?
            .map(|_| ())
            .map_err(AppError::internal)
    }

    /// `--rm`: removes a container that just stopped (its waiters were told its code).
    async fn remove_entry(&self, mut standalone: MutexGuard<'_, HashMap<String, Entry>>, id: &str) {
        if let Err(e) = self.delete_record(id).await {
            warn!(error = %e, "failed to remove a --rm container's record");
            return;
        }
        let image = standalone.remove(id).map(|entry| {
            self.events.record("destroy", &entry.record, None);
            info!(container = %entry.record.spec.name, "container removed (--rm)");
            entry.image()
        });
        drop(standalone);
        if let Some(image) = image {
            self.collect_image(image).await;
        }
    }

    /// Brings back `skiff run` containers after a node start, per restart policy: a
    /// container that was running when the node died (not stopped) counts as exited
    /// with 255.
    pub(crate) async fn restore(&self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let records = tokio::task::spawn_blocking(move || state.containers()).await??;
        let mut standalone = self.entries.lock().await;
        for mut record in records {
            // (A killed node's Linux containers were removed by `restore`.)
            let crashed = record.running;
            if crashed {
                record.running = false;
                record.exit_code = Some(255);
                record.finished_ms = now_ms();
            }
            let start = record.restart.restarts(record.exit_code);
            if record.auto_remove && !start {
                // `--rm`: it stopped (with the node), so it goes.
                let id = record.id.clone();
                self.delete_record(&id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                continue;
            }
            let mut entry = Entry::new(record);
            if start {
                if let Err(e) = self.start_entry(&mut entry).await {
                    warn!(container = %entry.record.spec.name, error = %e, "container could not be restarted");
                }
            } else if crashed {
                self.persist(&entry.record)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            standalone.insert(entry.record.id.clone(), entry);
        }
        Ok(())
    }

    /// Node shutdown: stop every container at once (each gets the whole grace, so a
    /// shutdown takes one grace period however many ignore SIGTERM), recording how
    /// each exited.
    pub(crate) async fn stop_all(&self) {
        let mut standalone = self.entries.lock().await;
        let mut stopping = Vec::new();
        for (id, entry) in standalone.iter_mut() {
            match self.begin_stop(entry).await {
                Ok(Some(running)) => stopping.push((id.clone(), running)),
                Ok(None) => {}
                Err(e) => {
                    warn!(container = %entry.record.spec.name, error = %e, "container did not stop cleanly");
                }
            }
        }
        let grace = self.drain;
        let exits = futures_util::future::join_all(
            stopping
                .into_iter()
                .map(|(id, running)| async move { (id, running.finish(grace).await) }),
        )
        .await;
        for (id, exit) in exits {
            let Some(entry) = standalone.get_mut(&id) else {
                continue;
            };
            if let Some(exit) = exit {
                entry.record.exited(&exit);
                if let Err(e) = self.persist(&entry.record).await {
                    warn!(container = %entry.record.spec.name, error = %e, "failed to record a container's exit");
                }
            }
            self.ended(entry);
        }
    }
}
