//! The one wasmtime `Engine` of the process.

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::WasmError;

/// The tier's instance pool (`gust up --wasm-slots`, `--wasm-max-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Component instances that may exist at once: requests served concurrently by the tier.
    pub slots: u32,
    /// Largest linear memory a component may grow to, and so the largest `--memory` a wasm
    /// function may ask for. Each slot reserves this much address space.
    pub max_memory_mb: u32,
}

impl Default for PoolSize {
    fn default() -> Self {
        Self {
            slots: 1_000,
            max_memory_mb: 256,
        }
    }
}
/// Linear memory reset in place (not returned to the kernel) when a slot is reused.
const KEEP_RESIDENT_BYTES: usize = 1024 * 1024;

/// The engine with a pool of instance slots, or, where the pool's address space cannot be
/// reserved (a limit on the process's address space, a small virtual address space), one that
/// allocates each instance on demand: slower to instantiate, but serving.
pub fn build(size: PoolSize) -> Result<Engine, WasmError> {
    let memory_bytes = size.max_memory_mb as usize * 1024 * 1024;
    let mut config = base_config(memory_bytes);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
        size.slots,
        memory_bytes,
    )));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(pooling) => {
            tracing::warn!(
                error = %format!("{pooling:#}"),
                "cannot reserve the address space of {} WebAssembly instance slots; \
                 instances are allocated on demand instead (slower instantiation)",
                size.slots
            );
            let mut config = base_config(memory_bytes);
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))
        }
    }
}

fn pool(slots: u32, memory_bytes: usize) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // A C component is a handful of core instances (module, preview1 adapter, shims); larger
    // toolchains use more. Memories and tables are per core instance.
    pool.total_component_instances(slots)
        .total_core_instances(slots * 4)
        .total_memories(slots)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_memories_per_component(2)
        .max_memory_size(memory_bytes)
        // Reset the start of each slot's memory and tables with memset rather than madvise:
        // a fresh instance per request would otherwise page-fault its way back into pages it
        // had a moment ago. Only pages an instance touched stay resident.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(64 * 1024)
        // Give each slot back as soon as its store is dropped (stores are dropped after the
        // response has gone out). Batching the returns (`decommit_batch_size` > 1) left slots
        // of a deleted component queued while the component was dropped; returned later,
        // they kept its compiled file and memory image mapped until reused.
        .decommit_batch_size(1)
        // Where the kernel can say which pages an instance touched (PAGEMAP_SCAN, Linux 6.7),
        // reset only those, with memset, instead of the whole resident prefix.
        .pagemap_scan(Enabled::Auto);
    pool
}

fn base_config(memory_bytes: usize) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        // Reserve only what the largest allowed memory needs, not the default 4 GiB per slot
        // (a thousand slots would reserve terabytes of address space).
        .memory_reservation(memory_bytes as u64)
        .memory_reservation_for_growth(0)
        // Bounds are checked by compiled code, not by guard pages and signal handlers: with a
        // reservation under 4 GiB the checks are emitted anyway, and without guard pages a
        // slot's memory needs no mprotect when an instance starts or grows (each such call
        // interrupts every core to flush its TLB). Measured: instantiation inside Gust went
        // from about 50 µs to about 33 µs on 2 cores.
        .memory_guard_size(0)
        .signals_based_traps(false);
    config
}
