//! Keeps this node's ResourceSlices in the API server equal to the node's DRA devices.
//!
//! What `k8s.io/dynamic-resource-allocation/resourceslice` does for Go drivers, in the same
//! order: read the Node once for the owner reference (so that the garbage collector removes the
//! slices with the Node), list the driver's slices of this node with a field selector, write the
//! difference ([`super::slices::plan`]), then *watch* them (never poll): a slice changed or
//! deleted by someone else is put back, and a new device list is written at once. Every write
//! carries the resourceVersion it replaces; a 409 Conflict re-reads that slice and plans again,
//! with back-off. A steady node makes no requests but the watch, re-opened every
//! [`PublisherConfig::watch_timeout`].
//!
//! At start, an unchanged node costs 3 requests (GET Node, LIST, WATCH); a changed or new one
//! adds one write per slice (1 for up to 128 devices). A health change costs one PUT.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use super::devices::DeviceList;
use super::slices::{self, Action, PoolTarget};

/// How the publisher runs.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `spec.driver`.
    pub driver: String,
    /// This node: `spec.nodeName`, the pool name and the owner.
    pub node: String,
    /// Delete the slices when stopped (an uninstall); otherwise they stay for the next start,
    /// which finds them current and writes nothing.
    pub delete_on_shutdown: bool,
    /// First retry delay after a failed request; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After a watch event shows someone else changed our slices, wait this long before putting
    /// them back (more events of the same change arrive meanwhile).
    pub repair_delay: Duration,
    /// Server-side watch timeout in seconds: the watch is re-opened this often.
    pub watch_timeout: u32,
}

impl PublisherConfig {
    pub fn new(driver: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            driver: driver.into(),
            node: node.into(),
            delete_on_shutdown: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            repair_delay: Duration::from_secs(1),
            watch_timeout: 1800,
        }
    }
}

/// Why the publisher stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The slices could not be deleted at shutdown.
    #[error("cannot delete ResourceSlice {name} at shutdown: {source}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Counts of what the publisher did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub conflicts: u64,
}

/// Exponential back-off between failed requests.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Publish `devices` until `shutdown` completes, then delete the slices if configured to.
/// Failures of the API server are retried with back-off and never end the publisher.
pub async fn run(
    client: kube::Client,
    config: PublisherConfig,
    devices: watch::Receiver<Arc<DeviceList>>,
    shutdown: impl Future<Output = ()>,
) -> Result<PublishStats, PublishError> {
    let mut publisher = Publisher::new(client, config, devices);
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        () = &mut shutdown => {}
        () = publisher.publish() => {}
    }
    if publisher.config.delete_on_shutdown {
        publisher.delete_all().await?;
    }
    Ok(publisher.stats)
}

/// What a watch loop ended with.
enum WatchEnd {
    /// Re-open the watch from the last resourceVersion.
    Rewatch,
    /// The resourceVersion is too old (410 Gone): list again.
    Relist,
}

struct Publisher {
    slices: Api<ResourceSlice>,
    nodes: Api<Node>,
    config: PublisherConfig,
    target: PoolTarget,
    devices: watch::Receiver<Arc<DeviceList>>,
    devices_open: bool,
    /// Our slices as the server last showed them, by name.
    cache: BTreeMap<String, ResourceSlice>,
    /// Where the watch resumes.
    resource_version: String,
    backoff: Backoff,
    stats: PublishStats,
    /// A sync is due at this time (repair after a foreign change, retry after a failure).
    sync_at: Option<Instant>,
    last_omitted: Vec<super::devices::Omission>,
}

impl Publisher {
    fn new(
        client: kube::Client,
        config: PublisherConfig,
        devices: watch::Receiver<Arc<DeviceList>>,
    ) -> Self {
        let target = PoolTarget {
            driver: config.driver.clone(),
            node: config.node.clone(),
            node_uid: None,
        };
        Self {
            slices: Api::all(client.clone()),
            nodes: Api::all(client),
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            config,
            target,
            devices,
            devices_open: true,
            cache: BTreeMap::new(),
            resource_version: String::new(),
            stats: PublishStats::default(),
            sync_at: None,
            last_omitted: Vec::new(),
        }
    }

    /// Runs until cancelled.
    async fn publish(&mut self) {
        self.target.node_uid = self.node_uid().await;
        loop {
            self.list().await;
            self.sync().await;
            // Re-open the watch until it says the resourceVersion expired: then list again.
            while let WatchEnd::Rewatch = self.watch().await {}
        }
    }

    async fn sleep_backoff(&mut self) {
        tokio::time::sleep(self.backoff.delay()).await;
    }

    /// The Node's UID for the owner reference. A Node that cannot be read for lack of
    /// permission leaves the slices without an owner (logged); a missing Node is waited for.
    async fn node_uid(&mut self) -> Option<String> {
        loop {
            match self.nodes.get(&self.config.node).await {
                Ok(node) => {
                    self.backoff.reset();
                    return node.metadata.uid;
                }
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    tracing::warn!(node = %self.config.node, message = %status.message,
                        "cannot read the Node: ResourceSlices are published without an owner reference \
                         and will outlive the Node; grant `get` on nodes");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(node = %self.config.node, %error, "cannot read the Node yet; retrying");
                    self.sleep_backoff().await;
                }
            }
        }
    }

    /// Replace the cache with the server's list.
    async fn list(&mut self) {
        let params = ListParams::default().fields(&self.target.field_selector());
        loop {
            match self.slices.list(&params).await {
                Ok(list) => {
                    self.backoff.reset();
                    self.cache = list
                        .items
                        .into_iter()
                        .filter_map(|s| Some((s.metadata.name.clone()?, s)))
                        .collect();
                    self.resource_version = list.metadata.resource_version.unwrap_or_default();
                    tracing::debug!(slices = self.cache.len(), resource_version = %self.resource_version,
                        "listed ResourceSlices");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot list ResourceSlices; retrying");
                    self.sleep_backoff().await;
                }
            }
        }
    }

    /// Watch our slices and the device list until the watch must be re-opened.
    async fn watch(&mut self) -> WatchEnd {
        let params = WatchParams::default()
            .fields(&self.target.field_selector())
            .timeout(self.config.watch_timeout);
        let stream = match self.slices.watch(&params, &self.resource_version).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot watch ResourceSlices; retrying");
                self.sleep_backoff().await;
                return WatchEnd::Rewatch;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let due = self.sync_at;
            let timer = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let devices_open = self.devices_open;
            tokio::select! {
                changed = self.devices.changed(), if devices_open => {
                    if changed.is_err() {
                        tracing::debug!("the device source is gone; the published devices stay as they are");
                        self.devices_open = false;
                    } else {
                        self.sync().await;
                    }
                }
                () = timer => {
                    self.sync_at = None;
                    self.sync().await;
                }
                event = stream.next() => match event {
                    None => return WatchEnd::Rewatch,
                    Some(Ok(event)) => {
                        if let Some(end) = self.on_event(event) {
                            return end;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "ResourceSlice watch failed; re-opening it");
                        self.sleep_backoff().await;
                        return WatchEnd::Rewatch;
                    }
                },
            }
        }
    }

    /// Fold a watch event into the cache; schedule a repair when the server no longer holds
    /// what we want.
    fn on_event(&mut self, event: WatchEvent<ResourceSlice>) -> Option<WatchEnd> {
        match event {
            WatchEvent::Added(slice) | WatchEvent::Modified(slice) => {
                self.note_version(&slice);
                if let Some(name) = slice.metadata.name.clone() {
                    let newer = self
                        .cache
                        .get(&name)
                        .is_none_or(|cached| !is_older(&slice, cached));
                    if newer {
                        self.cache.insert(name, slice);
                    }
                }
            }
            WatchEvent::Deleted(slice) => {
                self.note_version(&slice);
                if let Some(name) = &slice.metadata.name {
                    let same = self
                        .cache
                        .get(name)
                        .is_some_and(|cached| cached.metadata.uid == slice.metadata.uid);
                    if same {
                        self.cache.remove(name);
                    }
                }
            }
            WatchEvent::Bookmark(bookmark) => {
                self.resource_version = bookmark.metadata.resource_version;
                return None;
            }
            WatchEvent::Error(status) if status.code == 410 => {
                tracing::debug!(message = %status.message, "watch resourceVersion expired; listing again");
                return Some(WatchEnd::Relist);
            }
            WatchEvent::Error(status) => {
                tracing::warn!(code = status.code, message = %status.message, "ResourceSlice watch error");
                return Some(WatchEnd::Rewatch);
            }
        }
        if !self.plan().is_empty() && self.sync_at.is_none() {
            tracing::info!("our ResourceSlices were changed by someone else; putting them back");
            self.sync_at = Some(Instant::now() + self.config.repair_delay);
        }
        None
    }

    fn note_version(&mut self, slice: &ResourceSlice) {
        if let Some(rv) = &slice.metadata.resource_version {
            self.resource_version.clone_from(rv);
        }
    }

    fn plan(&self) -> Vec<Action> {
        let devices = self.devices.borrow().clone();
        let current: Vec<ResourceSlice> = self.cache.values().cloned().collect();
        slices::plan(&self.target, &devices.devices, &current)
    }

    fn log_omissions(&mut self) {
        let devices = self.devices.borrow().clone();
        if devices.omitted != self.last_omitted {
            for o in &devices.omitted {
                tracing::info!(device = %o.device, attribute = o.attribute, reason = %o.reason,
                    "DRA device attribute left out");
            }
            self.last_omitted.clone_from(&devices.omitted);
        }
    }

    /// Write until the server holds the wanted slices, or a failure schedules a retry.
    async fn sync(&mut self) {
        self.log_omissions();
        // A bound on rounds: every round either finishes or re-read what conflicted.
        for _ in 0..8 {
            let actions = self.plan();
            if actions.is_empty() {
                self.backoff.reset();
                return;
            }
            match self.apply(actions).await {
                Ok(()) => continue,
                Err(Retry::Now) => {
                    tokio::time::sleep(self.backoff.delay()).await;
                }
                Err(Retry::Later) => break,
            }
        }
        let delay = self.backoff.delay();
        tracing::warn!(retry_in = ?delay, "ResourceSlices not in sync; retrying");
        self.sync_at = Some(Instant::now() + delay);
    }

    async fn apply(&mut self, actions: Vec<Action>) -> Result<(), Retry> {
        for action in actions {
            match action {
                Action::Delete {
                    name,
                    uid,
                    resource_version,
                } => {
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid,
                            resource_version,
                        }),
                        ..DeleteParams::default()
                    };
                    match self.slices.delete(&name, &params).await {
                        Ok(_) => {
                            self.stats.deletes += 1;
                            tracing::info!(slice = %name, "deleted obsolete ResourceSlice");
                            self.cache.remove(&name);
                        }
                        Err(kube::Error::Api(s)) if s.is_not_found() => {
                            self.cache.remove(&name);
                        }
                        Err(error) => return Err(self.failed("delete", &name, error).await),
                    }
                }
                Action::Update(slice) => {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    match self
                        .slices
                        .replace(&name, &PostParams::default(), &slice)
                        .await
                    {
                        Ok(stored) => {
                            self.stats.updates += 1;
                            tracing::info!(slice = %name, generation = stored.spec.pool.generation,
                                devices = device_count(&stored), "updated ResourceSlice");
                            self.cache.insert(name, stored);
                        }
                        Err(error) => return Err(self.failed("update", &name, error).await),
                    }
                }
                Action::Create(slice) => {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    match self.slices.create(&PostParams::default(), &slice).await {
                        Ok(stored) => {
                            self.stats.creates += 1;
                            tracing::info!(slice = %name, generation = stored.spec.pool.generation,
                                devices = device_count(&stored), "created ResourceSlice");
                            self.cache.insert(name, stored);
                        }
                        Err(error) => return Err(self.failed("create", &name, error).await),
                    }
                }
            }
        }
        Ok(())
    }

    /// After a failed write: on a conflict (stale resourceVersion, the name taken, a failed
    /// precondition) re-read the slice so that the next plan starts from the truth.
    async fn failed(&mut self, verb: &'static str, name: &str, error: kube::Error) -> Retry {
        match &error {
            kube::Error::Api(status) if status.is_conflict() || status.is_already_exists() => {
                self.stats.conflicts += 1;
                tracing::debug!(slice = %name, verb, message = %status.message, "conflict; re-reading");
                match self.slices.get_opt(name).await {
                    Ok(Some(current)) => {
                        self.cache.insert(name.to_string(), current);
                    }
                    Ok(None) => {
                        self.cache.remove(name);
                    }
                    Err(error) => {
                        tracing::warn!(slice = %name, %error, "cannot re-read ResourceSlice");
                        return Retry::Later;
                    }
                }
                Retry::Now
            }
            kube::Error::Api(status) if status.is_invalid() => {
                // Our bug or a cluster without a field we write: retrying soon will not help.
                tracing::error!(slice = %name, verb, message = %status.message,
                    "the API server refused the ResourceSlice");
                Retry::Later
            }
            _ => {
                tracing::warn!(slice = %name, verb, %error, "ResourceSlice write failed");
                Retry::Later
            }
        }
    }

    /// Delete every slice of ours (uninstall).
    async fn delete_all(&mut self) -> Result<(), PublishError> {
        let names: Vec<(String, Option<String>)> = self
            .cache
            .iter()
            .map(|(name, s)| (name.clone(), s.metadata.uid.clone()))
            .collect();
        for (name, uid) in names {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.slices.delete(&name, &params).await {
                Ok(_) => {
                    self.stats.deletes += 1;
                    tracing::info!(slice = %name, "deleted ResourceSlice at shutdown");
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => return Err(PublishError::Delete { name, source }),
            }
        }
        self.cache.clear();
        Ok(())
    }
}

/// When to try again after a failed write.
enum Retry {
    /// The cause was re-read: plan again after the back-off.
    Now,
    /// Schedule a later sync.
    Later,
}

fn device_count(slice: &ResourceSlice) -> usize {
    slice.spec.devices.as_ref().map_or(0, Vec::len)
}

/// True when `a` is an older version of the object than `b`. resourceVersions are opaque, but
/// every API server today issues integers, and client-go's mutation cache compares them so
/// (`NewIntegerResourceVersionMutationCache`); non-integers count as not older.
fn is_older(a: &ResourceSlice, b: &ResourceSlice) -> bool {
    let version = |s: &ResourceSlice| {
        s.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    matches!((version(a), version(b)), (Some(x), Some(y)) if x < y)
}

/// A device list that follows `source`: `build` runs on every new value and a new list is
/// published only when it differs, so the publisher wakes for device changes only (not for a
/// config reload that leaves the devices alone). The task ends with `source`'s sender.
pub fn follow<T: Send + Sync + 'static>(
    mut source: watch::Receiver<T>,
    build: impl Fn(&T) -> DeviceList + Send + 'static,
) -> watch::Receiver<Arc<DeviceList>> {
    let first = build(&source.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let next = build(&source.borrow_and_update());
            tx.send_if_modified(|current| {
                if **current == next {
                    return false;
                }
                *current = Arc::new(next);
                true
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}
