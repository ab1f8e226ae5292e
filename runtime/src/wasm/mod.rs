//! Everything that touches wasmtime.

mod cache;
mod guest;
mod http;
mod outbound;
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
pub use self::wagi::parse_cgi;
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
    /// Guest memory the node may commit at once, in bytes: every Wasm instance reserves
    /// its app's memory limit while it lives, and every Linux container its cgroup
    /// limit. Default: half of the machine's memory.
    pub memory_budget: u64,
    /// Where compilation runs. `None`: in this process (it cannot be stopped at its
    /// timeout, only abandoned; for tests). The node runs it in a child process.
    pub compiler: Option<CompilerCommand>,
}

/// A child process that compiles one binary: `program args... <worker arguments>`,
/// running [`compile_worker`]. It is killed at the compile timeout and limited to
/// `memory_bytes` of heap, so a hostile module costs at most that, for that long.
#[derive(Clone, Debug)]
pub struct CompilerCommand {
    /// The executable (the node's own binary).
    pub program: PathBuf,
    /// Arguments that select the worker in it.
    pub args: Vec<String>,
    /// Heap the compiler may use, in bytes. Default 2 GiB.
    pub memory_bytes: u64,
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
            memory_budget: machine_memory() / 2,
            compiler: None,
        }
    }
}

/// The machine's memory in bytes (`MemTotal`), or 4 GiB when it cannot be read.
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024)
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
    /// The compiler needed more memory than it is given.
    #[error("compiling {digest} needed more than the compiler's {limit}-byte memory limit")]
    TooBig {
        /// The image.
        digest: Digest,
        /// The limit.
        limit: u64,
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
#[derive(Clone, Debug, thiserror::Error)]
#[error("failed to link {kind} app: {message}")]
pub struct PrepareError {
    /// The app kind.
    pub kind: AppKind,
    /// wasmtime's message (usually an import skiff does not provide).
    pub message: String,
}

/// The node's memory budget, as the Wasm workloads reserve from it per instance.
#[derive(Clone)]
pub(crate) struct NodeMemory {
    pool: Arc<Semaphore>,
    budget: u64,
}

impl NodeMemory {
    /// Reserves one instance's worth (`bytes`) for as long as the result lives.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<MemoryReservation, MemoryError> {
        reserve(&self.pool, bytes, self.budget)
    }
}

fn reserve(
    pool: &Arc<Semaphore>,
    bytes: u64,
    budget: u64,
) -> Result<MemoryReservation, MemoryError> {
    if bytes > budget {
        return Err(MemoryError::OverBudget {
            needed: bytes,
            budget,
            what: format!("{bytes} bytes"),
        });
    }
    // At most 4 GiB (a wasm32 memory) in pages: fits a u32.
    let pages = u32::try_from(bytes.div_ceil(WASM_PAGE)).unwrap_or(u32::MAX);
    pool.clone()
        .try_acquire_many_owned(pages)
        .map(|permit| MemoryReservation { _permit: permit })
        .map_err(|_| MemoryError::Full {
            needed: bytes,
            free: pool.available_permits() as u64 * WASM_PAGE,
            budget,
        })
}

/// A share of the node's memory budget, given back when dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The node's memory budget cannot take more.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// More than the whole budget: it could never run here.
    #[error(
        "the node's memory budget of {budget} bytes cannot take {what} ({needed} bytes); raise --memory-budget or lower the memory limit"
    )]
    OverBudget {
        /// Bytes asked for.
        needed: u64,
        /// The node's budget.
        budget: u64,
        /// What was asked for, in words.
        what: String,
    },
    /// The budget is in use by what runs now.
    #[error(
        "the node's memory budget of {budget} bytes is in use: {needed} bytes are needed, {free} are free"
    )]
    Full {
        /// Bytes asked for.
        needed: u64,
        /// Bytes free now.
        free: u64,
        /// The node's budget.
        budget: u64,
    },
}

/// Refuses code whose largest initial memory exceeds `memory_bytes`: it would deploy,
/// report ready, and fail every request.
fn fits_memory(compiled: &Compiled, memory_bytes: u64) -> Result<(), PrepareError> {
    let (kind, required) = match &compiled.code {
        Code::Component(c) => (AppKind::Http, c.resources_required()),
        Code::Module(m) => (AppKind::Wagi, Some(m.resources_required())),
    };
    let pages = required
        .and_then(|r| r.max_initial_memory_size)
        .unwrap_or(0);
    let needed = pages.saturating_mul(WASM_PAGE);
    if needed > memory_bytes {
        return Err(PrepareError {
            kind,
            message: format!(
                "its initial memory is {needed} bytes ({pages} pages), more than the app's memory limit of {memory_bytes} bytes; raise --memory or shrink the module's minimum"
            ),
        });
    }
    Ok(())
}

/// Bytes in a Wasm page (the default page size).
const WASM_PAGE: u64 = 64 << 10;

/// Compiled code for one image, shared by every container running that image.
pub struct Compiled {
    code: Code,
    /// The code linked against the node's imports, once: every container of it shares
    /// the one `InstancePre` (its resolved imports are the same), so a pod costs its
    /// settings, not a copy of its imports.
    linked: std::sync::OnceLock<Result<Linked, PrepareError>>,
    /// Whether the code came from the on-disk cache rather than the compiler.
    pub from_cache: bool,
    /// How long compiling (or loading) took.
    pub took: Duration,
}

/// Code linked against skiff's imports, ready to instantiate.
#[derive(Clone)]
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
    compiler: Option<CompilerCommand>,
    /// The node's guest memory, in Wasm pages (64 KiB), shared by every instance and
    /// Linux container.
    memory: Arc<Semaphore>,
    memory_budget: u64,
    /// Compiled code by digest, so a thousand apps of the same image share one copy:
    /// every workload holds an `Arc` of its code, so an entry lives as long as any
    /// container runs it.
    loaded: Mutex<HashMap<(Digest, AppKind), Weak<Compiled>>>,
    /// One lock per code being compiled or loaded: pods of one image made at once load
    /// its code once and share it.
    loading: Mutex<HashMap<(Digest, AppKind), LoadingLock>>,
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
                compiler: config.compiler.clone(),
                memory: Arc::new(Semaphore::new(
                    (config.memory_budget / WASM_PAGE).min(Semaphore::MAX_PERMITS as u64) as usize,
                )),
                memory_budget: config.memory_budget,
                loaded: Mutex::new(HashMap::new()),
                loading: Mutex::new(HashMap::new()),
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
        Ok(self.compile_or_share(digest, kind, wasm).await?.0)
    }

    /// [`Self::compile`], and whether this call compiled or loaded the code (false:
    /// another caller's code was shared).
    pub async fn compile_or_share(
        &self,
        digest: Digest,
        kind: AppKind,
        wasm: Arc<[u8]>,
    ) -> Result<(Arc<Compiled>, bool), CompileError> {
        let key = (digest, kind);
        if let Some(hit) = self.loaded_get(&key) {
            return Ok((hit, false));
        }
        let loading = self
            .inner
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let guard = loading.lock().await;
        let result = self.compile_once(key, wasm).await;
        drop(guard);
        drop(loading);
        // Whoever waits holds a clone: only locks nobody holds go.
        self.inner
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| Arc::strong_count(l) > 1);
        result
    }

    /// [`Self::compile`] for the one caller holding `key`'s loading lock.
    async fn compile_once(
        &self,
        key: (Digest, AppKind),
        wasm: Arc<[u8]>,
    ) -> Result<(Arc<Compiled>, bool), CompileError> {
        let (digest, kind) = key;
        // Whoever held the loading lock before may have loaded it.
        if let Some(hit) = self.loaded_get(&key) {
            return Ok((hit, false));
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
            return Ok((hit, false));
        }
        if let Some(compiler) = &self.inner.compiler {
            let this = self.clone();
            let cached = tokio::task::spawn_blocking(move || this.load_cached(digest, kind))
                .await
                .map_err(|e| CompileError::Internal {
                    digest,
                    message: e.to_string(),
                })?;
            let compiled = Arc::new(match cached {
                Some(hit) => hit,
                None => self.compile_in_child(compiler, digest, kind, &wasm).await?,
            });
            return Ok((self.remember(key, compiled), true));
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
        Ok((self.remember(key, compiled), true))
    }

    fn remember(&self, key: (Digest, AppKind), compiled: Arc<Compiled>) -> Arc<Compiled> {
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, weak| weak.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&compiled));
        compiled
    }

    /// Compiles in a child process ([`compile_worker`]) that is killed at the compile
    /// timeout, so the time and memory a hostile module costs end with the deploy that
    /// brought it (the compile permit is held until the child is gone).
    async fn compile_in_child(
        &self,
        compiler: &CompilerCommand,
        digest: Digest,
        kind: AppKind,
        wasm: &[u8],
    ) -> Result<Compiled, CompileError> {
        let start = Instant::now();
        let internal = |message: String| CompileError::Internal { digest, message };
        let component = is_component(digest, kind)?;
        let dir = tempfile::Builder::new()
            .prefix(".compile-")
            .tempdir_in(self.inner.cache.dir())
            .map_err(|e| internal(format!("failed to make a compile directory: {e}")))?;
        let input = dir.path().join("input.wasm");
        let output = dir.path().join("output.cwasm");
        tokio::fs::write(&input, wasm)
            .await
            .map_err(|e| internal(format!("failed to write the compiler's input: {e}")))?;
        let mut child = tokio::process::Command::new(&compiler.program)
            .args(&compiler.args)
            .arg(if component { "component" } else { "module" })
            .arg(compiler.memory_bytes.to_string())
            .arg(&input)
            .arg(&output)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(format!("failed to start the compiler: {e}")))?;
        let mut stderr = child.stderr.take().expect("piped");
        let read_stderr = async {
            let mut buf = Vec::new();
            // Bounded: a compiler's message is a few lines.
            let _ = tokio::io::AsyncReadExt::read_to_end(
                &mut tokio::io::AsyncReadExt::take(&mut stderr, 64 << 10),
                &mut buf,
            )
            .await;
            String::from_utf8_lossy(&buf).trim().to_string()
        };
        let waited = tokio::time::timeout(self.inner.compile_timeout, async {
            tokio::join!(child.wait(), read_stderr)
        })
        .await;
        let (status, message) = match waited {
            Err(_) => {
                let _ = child.kill().await;
                return Err(CompileError::TimedOut {
                    digest,
                    limit: self.inner.compile_timeout,
                });
            }
            Ok((status, message)) => (
                status.map_err(|e| internal(format!("failed to wait for the compiler: {e}")))?,
                message,
            ),
        };
        match status.code() {
            Some(0) => {}
            Some(WORKER_INVALID) => return Err(CompileError::Invalid { digest, message }),
            Some(WORKER_TOO_BIG) => {
                return Err(CompileError::TooBig {
                    digest,
                    limit: compiler.memory_bytes,
                });
            }
            // Aborted on a failed allocation: out of its memory.
            None if message.contains("memory allocation") => {
                return Err(CompileError::TooBig {
                    digest,
                    limit: compiler.memory_bytes,
                });
            }
            _ => {
                return Err(internal(format!(
                    "the compiler failed ({status}): {message}"
                )));
            }
        }
        let bytes = tokio::fs::read(&output)
            .await
            .map_err(|e| internal(format!("failed to read the compiler's output: {e}")))?;
        // SAFETY: the bytes were just written by this node's own binary, compiling with
        // the same engine settings, into a directory only this node can write (the data
        // dir is 0700); the engine checks that they match its configuration.
        let code = unsafe { self.load_code(component, &bytes) }
            .map_err(|e| internal(format!("the compiler's output does not load: {e:#}")))?;
        let cache = self.inner.cache.clone();
        let stored = tokio::task::spawn_blocking(move || cache.store(&digest, kind, &bytes)).await;
        if let Ok(Err(e)) = stored {
            warn!(%digest, error = %e, "failed to cache compiled code");
        }
        let took = start.elapsed();
        info!(%digest, %kind, took_ms = took.as_millis() as u64, "compiled (in a worker)");
        Ok(Compiled {
            linked: std::sync::OnceLock::new(),
            code,
            from_cache: false,
            took,
        })
    }

    /// Loads serialized code (a component or a core module) into the engine.
    ///
    /// # Safety
    ///
    /// `bytes` must be code this node's engine configuration serialized: wasmtime runs
    /// it as native code without checking it.
    unsafe fn load_code(&self, component: bool, bytes: &[u8]) -> wasmtime::Result<Code> {
        let engine = &self.inner.engine;
        if component {
            // SAFETY: the caller's promise.
            unsafe { Component::deserialize(engine, bytes) }.map(Code::Component)
        } else {
            // SAFETY: the caller's promise.
            unsafe { Module::deserialize(engine, bytes) }.map(Code::Module)
        }
    }

    /// This node's cached compilation of `digest`, if it has a usable one.
    fn load_cached(&self, digest: Digest, kind: AppKind) -> Option<Compiled> {
        let start = Instant::now();
        let bytes = self.inner.cache.load(&digest, kind)?;
        // SAFETY: the bytes were produced by `serialize` on this node and are
        // authenticated by the cache's MAC, keyed with this node's secret; the
        // directory name carries the engine's compatibility hash.
        match unsafe { self.load_code(kind == AppKind::Http, &bytes) } {
            Ok(code) => Some(Compiled {
                linked: std::sync::OnceLock::new(),
                code,
                from_cache: true,
                took: start.elapsed(),
            }),
            Err(e) => {
                warn!(%digest, error = %e, "cached code unusable; recompiling");
                None
            }
        }
    }

    /// Code for `digest` that is loaded already (held by a running app), if any.
    pub fn loaded(&self, digest: Digest, kind: AppKind) -> Option<Arc<Compiled>> {
        self.loaded_get(&(digest, kind))
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
        let component = is_component(digest, kind)?;
        if let Some(hit) = self.load_cached(digest, kind) {
            return Ok(hit);
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
            linked: std::sync::OnceLock::new(),
            code,
            from_cache: false,
            took,
        })
    }

    /// Checks that the code's imports are all ones skiff provides, without making a
    /// container: a deploy calls this before it changes anything.
    pub fn check_links(&self, compiled: &Compiled) -> Result<(), PrepareError> {
        compiled
            .linked
            .get_or_init(|| self.link(compiled))
            .as_ref()
            .map(drop)
            .map_err(Clone::clone)
    }

    /// Reserves `bytes` of the node's memory budget until the reservation is dropped
    /// (a Linux container's memory limit, for as long as it runs).
    pub fn reserve_memory(&self, bytes: u64) -> Result<MemoryReservation, MemoryError> {
        reserve(&self.inner.memory, bytes, self.inner.memory_budget)
    }

    /// Whether one instance with `limits` can ever run on this node: its memory limit
    /// must fit the node's budget. (What runs at once is bounded per instance, by
    /// [`reserve`]; refusing deploys by their worst case, memory x concurrency, would
    /// refuse a node full of idle apps.)
    pub fn admit(&self, limits: &Limits) -> Result<(), MemoryError> {
        if limits.memory_bytes > self.inner.memory_budget {
            return Err(MemoryError::OverBudget {
                needed: limits.memory_bytes,
                budget: self.inner.memory_budget,
                what: format!("one instance of {} bytes", limits.memory_bytes),
            });
        }
        Ok(())
    }

    /// Links compiled code into one container's workload (an `InstancePre`).
    pub fn prepare(
        &self,
        compiled: &Arc<Compiled>,
        config: ContainerConfig,
    ) -> Result<Workload, PrepareError> {
        fits_memory(compiled, config.limits.memory_bytes)?;
        let memory = NodeMemory {
            pool: self.inner.memory.clone(),
            budget: self.inner.memory_budget,
        };
        let linked = compiled
            .linked
            .get_or_init(|| self.link(compiled))
            .clone()?;
        Ok(match linked {
            Linked::Http(pre) => {
                Workload::Http(HttpWorkload::new(pre, config, compiled.clone(), memory))
            }
            Linked::Wagi(pre) => {
                Workload::Wagi(WagiWorkload::new(pre, config, compiled.clone(), memory))
            }
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
        match Engine::new(&pooled_config(config.max_instances)) {
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

/// Bytes of a pooled linear memory reset in place (not decommitted) when its instance
/// ends: a small app's whole heap.
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// Bytes of a pooled table reset in place.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

fn pooled_config(max_instances: u32) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_memories(max_instances)
        .total_tables(max_instances)
        .total_core_instances(max_instances)
        .total_component_instances(max_instances)
        .max_memory_size(Limits::MAX_MEMORY_BYTES as usize);
    // Every request gets a fresh instance. Resetting its memory with madvise made each
    // request's end a TLB shootdown on every core (a third of the node's CPU under
    // load); the pages the instance touched are reset in place instead (the kernel's
    // PAGEMAP_SCAN finds them, 6.7 or later; memset of the low 2 MiB otherwise), so
    // a warm slot stays resident and the next instance takes no page faults.
    pool.linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut pooled = base_config();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    pooled
}

/// Whether `kind` is compiled as a component (`http`) or a core module (`wagi`).
fn is_component(digest: Digest, kind: AppKind) -> Result<bool, CompileError> {
    match kind {
        AppKind::Http => Ok(true),
        AppKind::Wagi => Ok(false),
        AppKind::Static | AppKind::Oci => Err(CompileError::Invalid {
            digest,
            message: format!("a {kind} image has no Wasm to compile"),
        }),
    }
}

/// Held while one code is compiled or loaded.
type LoadingLock = Arc<tokio::sync::Mutex<()>>;

/// The compile worker's exit code for a binary wasmtime refuses.
const WORKER_INVALID: i32 = 3;
/// The compile worker's exit code when its memory limit was reached.
const WORKER_TOO_BIG: i32 = 4;

/// The child side of [`CompilerCommand`]: `KIND MEMORY_BYTES INPUT OUTPUT`. Compiles
/// INPUT (a `component` or `module`) under a data limit of MEMORY_BYTES and writes the
/// serialized code to OUTPUT. Returns the exit code; messages go to stderr.
///
/// The engine has the node's settings but no instance pool: the pool's stacks would
/// count against the limit, and pooling does not change compiled code (a test checks
/// that the two engines' code is interchangeable).
pub fn compile_worker(args: &[std::ffi::OsString]) -> i32 {
    let [kind, memory, input, output] = args else {
        eprintln!("usage: KIND MEMORY_BYTES INPUT OUTPUT");
        return 2;
    };
    let (Some(kind), Some(Ok(memory))) = (kind.to_str(), memory.to_str().map(str::parse::<u64>))
    else {
        eprintln!("bad arguments: {args:?}");
        return 2;
    };
    // Paths stay OsStrings: the data dir need not be UTF-8.
    let (input, output) = (std::path::Path::new(input), std::path::Path::new(output));
    // RLIMIT_DATA bounds the heap and every writable private mapping: what compiling
    // allocates.
    if let Err(e) = rustix::process::setrlimit(
        rustix::process::Resource::Data,
        rustix::process::Rlimit {
            current: Some(memory),
            maximum: Some(memory),
        },
    ) {
        eprintln!("failed to limit the compiler's memory: {e}");
        return 2;
    }
    let engine = match Engine::new(&base_config()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("failed to create the engine: {e:#}");
            return 2;
        }
    };
    let wasm = match std::fs::read(input) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("failed to read {}: {e}", input.display());
            return 2;
        }
    };
    let compiled = match kind {
        "component" => engine.precompile_component(&wasm),
        "module" => engine.precompile_module(&wasm),
        other => {
            eprintln!("unknown kind {other}");
            return 2;
        }
    };
    match compiled {
        Ok(bytes) => match std::fs::write(output, bytes) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("failed to write {}: {e}", output.display());
                2
            }
        },
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("{message}");
            if message.contains("memory allocation") || message.contains("out of memory") {
                WORKER_TOO_BIG
            } else {
                WORKER_INVALID
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_holds_what_runs_and_refuses_what_never_fits() {
        let budget = 256 << 20;
        let pool = Arc::new(Semaphore::new((budget / WASM_PAGE) as usize));
        let a = reserve(&pool, 128 << 20, budget).unwrap();
        let _b = reserve(&pool, 100 << 20, budget).unwrap();
        let full = reserve(&pool, 64 << 20, budget).unwrap_err();
        assert!(
            matches!(full, MemoryError::Full { free, .. } if free == 28 << 20),
            "{full}"
        );
        drop(a);
        reserve(&pool, 64 << 20, budget).unwrap();
        let never = reserve(&pool, 512 << 20, budget).unwrap_err();
        assert!(matches!(never, MemoryError::OverBudget { .. }), "{never}");
    }

    #[tokio::test]
    async fn pods_of_one_image_made_at_once_load_its_code_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RuntimeConfig::new(dir.path().to_path_buf(), [7; 32]);
        config.pooling = false;
        let runtime = Runtime::new(config).unwrap();
        let wasm: Arc<[u8]> = wat::parse_str(r#"(module (func (export "_start")))"#)
            .unwrap()
            .into();
        let digest = Digest::from_sha256([1; 32]);
        let made = futures_util::future::join_all(
            (0..8).map(|_| runtime.compile_or_share(digest, AppKind::Wagi, wasm.clone())),
        )
        .await;
        let made: Vec<(Arc<Compiled>, bool)> = made.into_iter().map(Result::unwrap).collect();
        assert_eq!(made.iter().filter(|(_, fresh)| *fresh).count(), 1);
        assert!(made.iter().all(|(c, _)| Arc::ptr_eq(c, &made[0].0)));
        assert!(
            runtime.inner.loading.lock().unwrap().is_empty(),
            "no loading lock is left behind"
        );
    }

    #[test]
    fn code_from_the_workers_engine_loads_in_the_pooled_one() {
        // The worker compiles without the pool (its reservations would not fit under
        // the worker's memory limit); that must not change the code.
        let worker = Engine::new(&base_config()).unwrap();
        let pooled = Engine::new(&pooled_config(1000)).unwrap();
        let hash = |e: &Engine| {
            let mut h = std::hash::DefaultHasher::new();
            e.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&worker), hash(&pooled));
        let wasm = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let bytes = worker.precompile_module(&wasm).unwrap();
        // SAFETY: compiled just above by an engine of the same configuration.
        unsafe { Module::deserialize(&pooled, &bytes) }.unwrap();
    }
}
