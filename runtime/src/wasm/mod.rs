//! Everything that touches wasmtime.

mod cache;
mod guest;
mod http;
mod wagi;

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use skiff_spec::{AppKind, Digest, Limits};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

use self::cache::CodeCache;
use self::guest::{HttpState, WagiState};
pub(crate) use self::http::HttpWorkload;
pub(crate) use self::wagi::WagiWorkload;
use crate::{LogBook, Workload};

/// How often the epoch ticks. Guests yield to the executor at every tick and are
/// interrupted at the first tick past their deadline, so this is also the timeout's
/// resolution.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Process-wide runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Directory for compiled code (`<dir>/<engine hash>/<digest>.<kind>`).
    pub cache_dir: PathBuf,
    /// Secret that authenticates cache entries: only code this node compiled (and sealed
    /// with this key) is ever loaded. 32 bytes, kept private in the data dir.
    pub cache_key: [u8; 32],
    /// Compilations running at once. Default: the number of CPUs.
    pub compile_concurrency: usize,
    /// Longest a compilation may take before the deploy fails. Default 120 s.
    pub compile_timeout: Duration,
    /// Try the pooling allocator (falls back, with a log line, when the probe fails).
    /// Default true.
    pub pooling: bool,
    /// Instances alive at once across the node, when pooling. Default 1000.
    pub max_instances: u32,
}

impl RuntimeConfig {
    /// Defaults, with the cache in `cache_dir` sealed by `cache_key`.
    pub fn new(cache_dir: PathBuf, cache_key: [u8; 32]) -> Self {
        Self {
            cache_dir,
            cache_key,
            compile_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            compile_timeout: Duration::from_secs(120),
            pooling: true,
            max_instances: 1000,
        }
    }
}

/// Failures to turn an image into code.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// wasmtime refused the binary: the user's fault, a 4xx.
    #[error("failed to compile {digest}: {message}")]
    Invalid {
        /// The image.
        digest: Digest,
        /// wasmtime's message.
        message: String,
    },
    /// Compilation took longer than the configured limit.
    #[error("compiling {digest} took longer than {limit:?}")]
    TimedOut {
        /// The image.
        digest: Digest,
        /// The limit.
        limit: Duration,
    },
    /// The compile task died.
    #[error("compile task for {digest} failed: {message}")]
    Internal {
        /// The image.
        digest: Digest,
        /// What happened.
        message: String,
    },
}

/// Failures to link compiled code into a container.
#[derive(Debug, thiserror::Error)]
#[error("failed to link {kind} app: {message}")]
pub struct PrepareError {
    /// The app kind.
    pub kind: AppKind,
    /// wasmtime's message (usually an import skiff does not provide).
    pub message: String,
}

/// Compiled code for one image, shared by every container running that image.
#[derive(Clone)]
pub struct Compiled {
    code: Code,
    /// Whether the code came from the on-disk cache rather than the compiler.
    pub from_cache: bool,
    /// How long compiling (or loading) took.
    pub took: Duration,
}

/// Code linked against skiff's imports, ready to instantiate.
enum Linked {
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<HttpState>),
    Wagi(wasmtime::InstancePre<WagiState>),
}

#[derive(Clone)]
enum Code {
    Component(Component),
    Module(Module),
}

/// One container's settings.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// Container name (shown in logs).
    pub name: Arc<str>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Arguments after argv\[0\] (the image's ENTRYPOINT arguments, then CMD). WAGI
    /// appends the query's words after them.
    pub args: Vec<String>,
    /// Bounds.
    pub limits: Limits,
    /// Hosts outgoing HTTP may go to (`host`, `host:port` or `*`).
    pub allowed_hosts: Arc<[String]>,
    /// Where stdout and stderr go.
    pub log: Arc<LogBook>,
}

/// The process-lifetime half of the runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    component_linker: ComponentLinker<HttpState>,
    module_linker: Linker<WagiState>,
    cache: CodeCache,
    compile_permits: Semaphore,
    compile_timeout: Duration,
    /// Compiled code by digest, so a thousand apps of the same image share one copy:
    /// every workload holds an `Arc` of its code, so an entry lives as long as any
    /// container runs it.
    loaded: Mutex<HashMap<(Digest, AppKind), Weak<Compiled>>>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine (probing for the pooling allocator), the linkers and the epoch
    /// ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = build_engine(&config)?;
        let mut component_linker = ComponentLinker::new(&engine);
        // The full WASI 0.2 set, not only the proxy world's: a Rust component built for
        // wasm32-wasip2 imports wasi:cli/environment and friends even when it only serves
        // HTTP, and `wasmtime serve -S cli=y` runs it, so we must too.
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)
            .map_err(wrap("link WASI 0.2"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)
            .map_err(wrap("link wasi:http"))?;
        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut WagiState| &mut s.wasi)
            .map_err(wrap("link WASI preview1"))?;

        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache = CodeCache::open(
            config.cache_dir.join(format!("{:016x}", hasher.finish())),
            config.cache_key,
        )
        .map_err(wrap("open the code cache"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                component_linker,
                module_linker,
                cache,
                compile_permits: Semaphore::new(config.compile_concurrency.max(1)),
                compile_timeout: config.compile_timeout,
                loaded: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
    }

    /// Compiles `wasm` (or loads this node's cached compilation of it). Runs on the
    /// bounded compile pool, off the async executor. Code already loaded for another
    /// app is shared.
    pub async fn compile(
        &self,
        digest: Digest,
        kind: AppKind,
        wasm: Arc<[u8]>,
    ) -> Result<Arc<Compiled>, CompileError> {
        let key = (digest, kind);
        if let Some(hit) = self.loaded_get(&key) {
            return Ok(hit);
        }
        let _permit =
            self.inner
                .compile_permits
                .acquire()
                .await
                .map_err(|e| CompileError::Internal {
                    digest,
                    message: e.to_string(),
                })?;
        // Someone may have compiled it while we waited for a permit.
        if let Some(hit) = self.loaded_get(&key) {
            return Ok(hit);
        }
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || this.compile_blocking(digest, kind, &wasm));
        let compiled = match tokio::time::timeout(self.inner.compile_timeout, task).await {
            Err(_) => {
                return Err(CompileError::TimedOut {
                    digest,
                    limit: self.inner.compile_timeout,
                });
            }
            Ok(Err(join)) => {
                return Err(CompileError::Internal {
                    digest,
                    message: join.to_string(),
                });
            }
            Ok(Ok(result)) => Arc::new(result?),
        };
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, weak| weak.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    fn loaded_get(&self, key: &(Digest, AppKind)) -> Option<Arc<Compiled>> {
        let loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.get(key).and_then(Weak::upgrade)
    }

    fn compile_blocking(
        &self,
        digest: Digest,
        kind: AppKind,
        wasm: &[u8],
    ) -> Result<Compiled, CompileError> {
        let start = Instant::now();
        let engine = &self.inner.engine;
        let component = match kind {
            AppKind::Http => true,
            AppKind::Wagi => false,
            AppKind::Static | AppKind::Oci => {
                return Err(CompileError::Invalid {
                    digest,
                    message: format!("a {kind} image has no Wasm to compile"),
                });
            }
        };
        if let Some(bytes) = self.inner.cache.load(&digest, kind) {
            // SAFETY: the bytes were produced by `serialize` on this node and are
            // authenticated by the cache's MAC, keyed with this node's secret; the
            // directory name carries the engine's compatibility hash.
            let code = if component {
                unsafe { Component::deserialize(engine, &bytes) }.map(Code::Component)
            } else {
                unsafe { Module::deserialize(engine, &bytes) }.map(Code::Module)
            };
            match code {
                Ok(code) => {
                    return Ok(Compiled {
                        code,
                        from_cache: true,
                        took: start.elapsed(),
                    });
                }
                Err(e) => warn!(%digest, error = %e, "cached code unusable; recompiling"),
            }
        }
        let invalid = |e: wasmtime::Error| CompileError::Invalid {
            digest,
            message: format!("{e:#}"),
        };
        let (code, bytes) = if component {
            let c = Component::new(engine, wasm).map_err(invalid)?;
            let bytes = c.serialize().map_err(invalid)?;
            (Code::Component(c), bytes)
        } else {
            let m = Module::new(engine, wasm).map_err(invalid)?;
            let bytes = m.serialize().map_err(invalid)?;
            (Code::Module(m), bytes)
        };
        let took = start.elapsed();
        if let Err(e) = self.inner.cache.store(&digest, kind, &bytes) {
            warn!(%digest, error = %e, "failed to cache compiled code");
        }
        info!(%digest, %kind, took_ms = took.as_millis() as u64, "compiled");
        Ok(Compiled {
            code,
            from_cache: false,
            took,
        })
    }

    /// Checks that the code's imports are all ones skiff provides, without making a
    /// container: a deploy calls this before it changes anything.
    pub fn check_links(&self, compiled: &Compiled) -> Result<(), PrepareError> {
        self.link(compiled).map(drop)
    }

    /// Links compiled code into one container's workload (an `InstancePre`).
    pub fn prepare(
        &self,
        compiled: &Arc<Compiled>,
        config: ContainerConfig,
    ) -> Result<Workload, PrepareError> {
        Ok(match self.link(compiled)? {
            Linked::Http(pre) => Workload::Http(HttpWorkload::new(pre, config, compiled.clone())),
            Linked::Wagi(pre) => Workload::Wagi(WagiWorkload::new(pre, config, compiled.clone())),
        })
    }

    fn link(&self, compiled: &Compiled) -> Result<Linked, PrepareError> {
        let failed = |kind| {
            move |e: wasmtime::Error| PrepareError {
                kind,
                message: format!("{e:#}"),
            }
        };
        match &compiled.code {
            Code::Component(c) => self
                .inner
                .component_linker
                .instantiate_pre(c)
                .and_then(wasmtime_wasi_http::p2::bindings::ProxyPre::new)
                .map(Linked::Http)
                .map_err(failed(AppKind::Http)),
            Code::Module(m) => self
                .inner
                .module_linker
                .instantiate_pre(m)
                .map(Linked::Wagi)
                .map_err(failed(AppKind::Wagi)),
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Guests get the default 512 KiB of wasm stack; a deeper recursion is a trap (500),
    // never a host crash.
    config.max_wasm_stack(512 * 1024);
    config
}

fn build_engine(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    if config.pooling {
        // The probe is building the engine: the pool reserves its address space up front,
        // which fails where virtual memory is limited (ulimit -v, some containers).
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_core_instances(config.max_instances)
            .total_component_instances(config.max_instances)
            .max_memory_size(Limits::MAX_MEMORY_BYTES as usize);
        let mut pooled = base_config();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(engine) => {
                info!(
                    instances = config.max_instances,
                    "using the pooling instance allocator"
                );
                return Ok(engine);
            }
            Err(e) => {
                warn!(error = %e, "pooling allocator unavailable; falling back to on-demand allocation")
            }
        }
    }
    let engine = Engine::new(&base_config()).map_err(wrap("create the wasmtime engine"))?;
    Ok(engine)
}

/// Increments the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(EPOCH_TICK)
                {
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Building the runtime failed at `step`.
#[derive(Debug, thiserror::Error)]
#[error("failed to {step}: {message}")]
pub struct RuntimeError {
    /// What was being done.
    pub step: &'static str,
    /// Why it failed.
    pub message: String,
}

fn wrap<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> RuntimeError {
    move |e| RuntimeError {
        step,
        message: e.to_string(),
    }
}
