//! `skiff up` and `skiff gateway`: a node in this process, its flags, and what it prints.

use super::*;

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where the node keeps its state.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API listen address.
    #[arg(long, env = "SKIFF_API_ADDR", default_value = "127.0.0.1:7700")]
    api_addr: SocketAddr,
    /// Ingress listen address.
    #[arg(long, env = "SKIFF_INGRESS_ADDR", default_value = "127.0.0.1:7780")]
    ingress_addr: SocketAddr,
    /// Apps are served at http://<app>.<domain>:<ingress port>/.
    #[arg(long, env = "SKIFF_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Largest accepted upload, e.g. 64MiB.
    #[arg(long, env = "SKIFF_UPLOAD_LIMIT", default_value = "64MiB", value_parser = parse_bytes)]
    upload_limit: u64,
    /// Do not try the pooling instance allocator.
    #[arg(long, env = "SKIFF_NO_POOLING")]
    no_pooling: bool,
    /// A request head must arrive within this of its first byte (every listener).
    #[arg(long, env = "SKIFF_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// A keep-alive connection with no request in flight closes after this.
    #[arg(long, env = "SKIFF_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A request body that sends nothing for this long fails (API uploads, Linux apps).
    #[arg(long, env = "SKIFF_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// A client that reads nothing of a response for this long is dropped.
    #[arg(long, env = "SKIFF_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// Open connections per listener; more are closed at once.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Open connections per client address on each listener; more are closed at once.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128)]
    max_connections_per_client: usize,
    /// Most bytes of files one image may extract to.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    extract_max_bytes: u64,
    /// Most entries (files, directories, links) one image may extract to.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_ENTRIES", default_value_t = 1_000_000)]
    extract_max_entries: u64,
    /// Deepest path an image may hold, in directories.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_DEPTH", default_value_t = 128)]
    extract_max_depth: usize,
    /// Free disk an extraction or an image upload must leave on the data dir's disk.
    #[arg(long, env = "SKIFF_MIN_FREE_DISK", default_value = "512MiB", value_parser = parse_bytes)]
    min_free_disk: u64,
    /// Free disk a change to the node's state (a deploy, an apply, a tag) must leave on
    /// the data dir's disk; below it such writes are refused (507). Keep it below
    /// --min-free-disk, so state can still change once image writes are refused.
    #[arg(long, env = "SKIFF_MIN_FREE_DISK_STATE", default_value = "64MiB", value_parser = parse_bytes)]
    min_free_disk_state: u64,
    /// Guest memory the node commits at once: every Wasm instance holds its app's memory
    /// limit while it runs, every Linux container its --memory. Default: half of RAM.
    #[arg(long, env = "SKIFF_MEMORY_BUDGET", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Longest a Wasm compilation may take; the compiler process is killed then.
    #[arg(long, env = "SKIFF_COMPILE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    compile_timeout: Duration,
    /// Heap a Wasm compilation may use.
    #[arg(long, env = "SKIFF_COMPILE_MEMORY", default_value = "2GiB", value_parser = parse_bytes)]
    compile_memory: u64,
    /// Gossip listen address (UDP).
    #[arg(long, env = "SKIFF_GOSSIP_ADDR", default_value = "127.0.0.1:7701")]
    gossip_addr: SocketAddr,
    /// Move the API, ingress and gossip to HOST, on their default ports.
    #[arg(long, env = "SKIFF_LISTEN")]
    listen: Option<std::net::IpAddr>,
    /// The host other nodes reach this one at, when it differs (NAT).
    #[arg(long, env = "SKIFF_ADVERTISE")]
    advertise: Option<std::net::IpAddr>,
    /// A member's API address: join its cluster (first start only).
    #[arg(long, env = "SKIFF_JOIN")]
    join: Option<String>,
    /// The cluster's join token (the first node's <data-dir>/join-token).
    #[arg(long, env = "SKIFF_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// This node's name (default: the host name and a piece of the node id).
    #[arg(long, env = "SKIFF_NODE_NAME")]
    node_name: Option<String>,
    /// A node label KEY=VALUE (repeatable), for nodeSelector and spreading.
    #[arg(long = "label", value_parser = parse_env_arg)]
    labels: Vec<(String, String)>,
    /// Time between gossip rounds.
    #[arg(long, env = "SKIFF_GOSSIP_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    gossip_interval: Duration,
    /// Suspicion (phi) above which a silent node counts as dead; raise it on slow machines.
    #[arg(long, env = "SKIFF_PHI_THRESHOLD", default_value_t = 8.0)]
    phi_threshold: f64,
    /// How long a Raft voter may be dead before a live node takes its vote.
    #[arg(long, env = "SKIFF_VOTER_GRACE", default_value = "30s", value_parser = parse_duration)]
    voter_grace: Duration,
    /// Memory this node offers pods (placement weighs and bounds by it); default: the
    /// machine's.
    #[arg(long, env = "SKIFF_CAPACITY_MEMORY", value_parser = parse_bytes)]
    capacity_memory: Option<u64>,
}

/// `skiff gateway`: a node that only routes, for a cluster it joins (or joined).
pub(crate) async fn gateway(args: UpArgs) -> anyhow::Result<()> {
    if args.join.is_none()
        && !args
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir)
            .join("cluster.json")
            .exists()
    {
        anyhow::bail!(
            "a gateway routes for a cluster: give --join <member API address> and --join-token"
        );
    }
    up(args, true).await
}

pub(crate) async fn up(args: UpArgs, gateway: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft narrates every vote and append at info: its warnings are enough.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut config = skiff_node::NodeConfig::new(data_dir);
    config.api_addr = args.api_addr;
    config.ingress_addr = args.ingress_addr;
    config.cluster.gossip_addr = args.gossip_addr;
    if let Some(host) = args.listen {
        config.api_addr = SocketAddr::new(host, 7700);
        config.ingress_addr = SocketAddr::new(host, 7780);
        config.cluster.gossip_addr = SocketAddr::new(host, 7701);
    }
    config.cluster.advertise = args.advertise;
    config.cluster.join = args.join;
    config.cluster.join_token = args.join_token;
    config.cluster.node_name = args.node_name;
    config.cluster.labels = args.labels.into_iter().collect();
    config.cluster.gossip_interval = args.gossip_interval;
    config.cluster.phi_threshold = args.phi_threshold;
    config.cluster.voter_grace = args.voter_grace;
    config.cluster.capacity_memory = args.capacity_memory;
    config.cluster.gateway = gateway;
    config.domain = args.domain;
    config.upload_cap = args.upload_limit;
    config.pooling = !args.no_pooling;
    config.listener = skiff_node::ListenerLimits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        body_timeout: args.body_timeout,
        write_timeout: args.write_timeout,
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
    };
    if let Some(budget) = args.memory_budget {
        config.memory_budget = budget;
    }
    config.compile_timeout = args.compile_timeout;
    config.compiler = Some(skiff_node::CompilerCommand {
        program: std::env::current_exe().context("failed to find this program's path")?,
        args: vec![COMPILE_WORKER.to_string()],
        memory_bytes: args.compile_memory,
    });
    config.extract = skiff_node::ImageExtractLimits {
        max_bytes: args.extract_max_bytes,
        max_entries: args.extract_max_entries,
        max_depth: args.extract_max_depth,
        min_free_bytes: args.min_free_disk,
    };
    config.state_reserve = args.min_free_disk_state;
    let node = skiff_node::start(config.clone()).await?;
    // Listened for before the addresses are printed: whoever reads them may stop the
    // node at once, and a signal without a handler would end it without a drain.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let verb = if node.token_created {
        "created"
    } else {
        "using"
    };
    println!("skiff is up");
    let token = if node.token_path.exists() {
        format!("token {verb} at {}", node.token_path.display())
    } else {
        "the admin token is the first node's: this node holds only its hash".to_string()
    };
    println!(
        "  API:     http://{}  (also https, CA at {}; {token})",
        node.api_addr,
        config.data_dir.join("tls/ca.crt").display(),
    );
    if let Some(socket) = &node.api_socket {
        println!(
            "  cli:     SKIFF_DATA_DIR={} skiff ...  (over {}, no token sent)",
            config.data_dir.display(),
            socket.display()
        );
    }
    println!(
        "  ingress: http://<app>.{}:{}/",
        config.domain,
        node.ingress_addr.port()
    );
    println!(
        "  join:    SKIFF_JOIN_TOKEN={} skiff up --join {} ...  (gossip on {}/UDP)",
        node.join_token, node.api_addr, node.gossip_addr
    );
    if let Some(socket) = &node.docker_socket {
        println!("  docker:  export DOCKER_HOST=unix://{}", socket.display());
    }
    println!(
        "  kubectl: skiff kubeconfig > skiff.kubeconfig; KUBECONFIG=skiff.kubeconfig kubectl get nodes"
    );
    match &node.api_socket {
        Some(socket) => println!(
            "  deploy:  curl --unix-socket {} -T app.wasm http://localhost/v1/apps/hello",
            socket.display()
        ),
        None => println!(
            "  deploy:  curl -T app.wasm -H \"Authorization: Bearer $(cat {})\" http://{}/v1/apps/hello",
            node.token_path.display(),
            node.api_addr
        ),
    }
    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: draining in-flight requests");
        shutdown.cancel();
    });
    // Raft stopping on its own (a storage error) ends the node with one line saying
    // why and a failing exit status, for its supervisor to restart it.
    node.wait().await
}
