//! Per-request store state and the bounds every store is created with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::ContainerConfig;
use super::outbound::OutboundPolicy;
use crate::{HandleError, LogBook, LogStream, TrapKind};

/// Memory and table bounds for one store, remembering whether it had to refuse growth
/// so a later trap can be reported as "memory limit" rather than a bare `unreachable`.
pub(crate) struct Limiter {
    memory_bytes: usize,
    hit: Arc<AtomicBool>,
    /// The container's totals, which count the memory this store holds until it goes.
    usage: Arc<crate::Usage>,
    held: u64,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: u64, usage: Arc<crate::Usage>) -> (Self, Arc<AtomicBool>) {
        let hit = Arc::new(AtomicBool::new(false));
        (
            Self {
                memory_bytes: memory_bytes as usize,
                hit: hit.clone(),
                usage,
                held: 0,
            },
            hit,
        )
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.usage.freed(self.held);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        if ok {
            let grown = desired.saturating_sub(current) as u64;
            self.held += grown;
            self.usage.grew(grown);
        } else {
            self.hit.store(true, Ordering::Relaxed);
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Store data of a `wasi:http` request.
pub(crate) struct HttpState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) outbound: OutboundPolicy,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Store data of a WAGI request.
pub(crate) struct WagiState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
}

/// A guest's stdout or stderr, line by line into the app's log.
pub(crate) struct LogOutput {
    pub(crate) book: Arc<LogBook>,
    pub(crate) container: Arc<str>,
    pub(crate) stream: LogStream,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.book.writer(self.container.clone(), self.stream))
    }
}

/// Sets stdout/stderr to the container's log and the environment.
pub(crate) fn wasi_builder(config: &ContainerConfig) -> wasmtime_wasi::WasiCtxBuilder {
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.stdout(LogOutput {
        book: config.log.clone(),
        container: config.name.clone(),
        stream: LogStream::Stdout,
    });
    b.stderr(LogOutput {
        book: config.log.clone(),
        container: config.name.clone(),
        stream: LogStream::Stderr,
    });
    b.envs(&config.env);
    b.arg(&*config.name);
    b.args(&config.args);
    b
}

/// Bounds a fresh store: memory via the limiter, CPU via the epoch deadline. The guest
/// yields to the executor at every epoch tick (so a spinning guest never holds a worker
/// thread) and is interrupted at the first tick past `deadline`.
pub(crate) fn bound_store<T: 'static>(
    store: &mut Store<T>,
    deadline: Instant,
    limiter: fn(&mut T) -> &mut Limiter,
) {
    store.limiter(move |t| limiter(t) as &mut dyn ResourceLimiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
}

/// Why a run ended early: the host could not create the instance, or the guest failed.
pub(crate) enum RunError {
    Instantiate(wasmtime::Error),
    Guest(wasmtime::Error),
}

/// Classifies an error that came out of guest execution.
pub(crate) fn classify(
    err: &wasmtime::Error,
    memory_hit: bool,
    timeout: std::time::Duration,
) -> HandleError {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        let kind = match trap {
            wasmtime::Trap::Interrupt => return HandleError::Timeout(timeout),
            _ if memory_hit => TrapKind::MemoryLimit,
            wasmtime::Trap::StackOverflow => TrapKind::StackOverflow,
            wasmtime::Trap::UnreachableCodeReached => TrapKind::Unreachable,
            wasmtime::Trap::MemoryOutOfBounds
            | wasmtime::Trap::TableOutOfBounds
            | wasmtime::Trap::HeapMisaligned => TrapKind::OutOfBounds,
            wasmtime::Trap::IntegerDivisionByZero
            | wasmtime::Trap::IntegerOverflow
            | wasmtime::Trap::BadConversionToInteger => TrapKind::Arithmetic,
            _ => TrapKind::Other,
        };
        return HandleError::Trap {
            kind,
            message: format!("{err:?}"),
        };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return HandleError::Trap {
            kind: TrapKind::Exit,
            message: format!("guest exited with status {}", exit.0),
        };
    }
    let kind = if memory_hit {
        TrapKind::MemoryLimit
    } else {
        TrapKind::Other
    };
    HandleError::Trap {
        kind,
        message: format!("{err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_granted_memory_until_its_store_goes() {
        let usage = Arc::new(crate::Usage::default());
        let (mut a, hit) = Limiter::new(1 << 20, usage.clone());
        let (mut b, _) = Limiter::new(1 << 20, usage.clone());
        assert!(a.memory_growing(0, 65536, None).unwrap());
        assert!(a.memory_growing(65536, 131_072, None).unwrap());
        assert!(b.memory_growing(0, 65536, None).unwrap());
        assert_eq!(usage.memory(), 196_608, "two stores' grants");
        // Refused growth is not counted, and says the limit was hit.
        assert!(!a.memory_growing(131_072, 2 << 20, None).unwrap());
        assert!(hit.load(Ordering::Relaxed));
        assert_eq!(usage.memory(), 196_608);
        drop(a);
        assert_eq!(
            usage.memory(),
            65536,
            "a dropped store gives its memory back"
        );
        drop(b);
        assert_eq!(usage.memory(), 0);
    }
}
