//! The telemetry collector: samples every GPU and MIG device at `--collect-interval` into a
//! cache that `/metrics` reads, so a scrape never calls NVML.
//!
//! The backend call is blocking (NVML is a C library) and runs on a blocking thread. The backend
//! leaves out a device it cannot read and keeps the others, so one failing GPU never hides the
//! rest; a value a device does not support stays `None` and its series is omitted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::gpu::{GpuBackend, Inventory, Telemetry};

/// The latest sample and the inventory it was taken for.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySample {
    /// The inventory that was sampled (devices not in it have no telemetry here).
    pub inventory: Arc<Inventory>,
    /// Per device UUID (GPU or MIG).
    pub devices: Telemetry,
}

/// Where scrapes read the latest sample from.
pub type TelemetryCache = watch::Receiver<Arc<TelemetrySample>>;

/// An empty cache and the sender the collector publishes into.
pub fn cache() -> (watch::Sender<Arc<TelemetrySample>>, TelemetryCache) {
    watch::channel(Arc::new(TelemetrySample::default()))
}

/// Sample at start, then every `interval` and whenever the inventory changes, until `shutdown`
/// turns true or the inventory channel closes.
pub async fn run(
    backend: Arc<dyn GpuBackend>,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    interval: Duration,
    out: watch::Sender<Arc<TelemetrySample>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = inventory.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let current = inventory.borrow_and_update().clone();
        let sampled = current.clone();
        let backend = backend.clone();
        match tokio::task::spawn_blocking(move || backend.telemetry(&sampled)).await {
            Ok(devices) => {
                tracing::debug!(devices = devices.len(), "telemetry sampled");
                out.send_replace(Arc::new(TelemetrySample {
                    inventory: current,
                    devices,
                }));
            }
            // A panic inside the backend: keep the previous sample and try again next tick.
            Err(e) => {
                tracing::warn!(error = %e, "telemetry sampling failed; keeping the last sample")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::mock::MockBackend;

    #[tokio::test]
    async fn samples_at_start_and_on_every_tick() {
        let backend = Arc::new(
            MockBackend::from_text(
                "gpus: [{model: X, memoryMiB: 100, telemetry: {utilizationPercent: 42}}]",
            )
            .unwrap(),
        );
        let inventory = Arc::new(backend.inventory().unwrap());
        let uuid = inventory.gpus[0].uuid.clone();
        let (_inv_tx, inv_rx) = watch::channel(inventory);
        let (tx, mut rx) = cache();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            backend,
            inv_rx,
            Duration::from_millis(100),
            tx,
            stop_rx,
        ));
        rx.changed().await.unwrap();
        let sample = rx.borrow_and_update().clone();
        assert_eq!(sample.devices[&uuid].utilization_percent, Some(42.0));
        // And again on the next tick.
        tokio::time::timeout(Duration::from_secs(20), rx.changed())
            .await
            .expect("a second sample after one interval")
            .unwrap();
    }
}
