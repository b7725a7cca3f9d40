//! One set of Zenoh declarations for the presence and handshakes of every link end of one
//! role on a session.
//!
//! A link end on its own declares a subscriber for its peer's frames, a publisher and a
//! liveliness token, plus a liveliness subscriber for its peer's token and (the DR) a
//! queryable for handshakes. A DR host of thousands of twins, or a load generator of
//! thousands of vehicles, that did the same would make Zenoh match every one of those
//! declarations against every other one (the cost of a declaration grows with the number
//! already made). A [`LinkHub`] declares the liveliness subscriber and the queryable once,
//! with wildcards over the vehicle chunk (`twinlink/v1/twin/*/alive/pe`,
//! `twinlink/v1/twin/*/sync`), and hands what arrives to the link end registered for the
//! key's vehicle: a lookup in a map on Zenoh's receiving thread, then a channel.
//!
//! Frames stay on each link end's own exact subscriber and publisher: Zenoh caches the
//! route of a declared key, while a sample that reaches only a wildcard subscriber has
//! its route computed anew, at a cost that grows with every key the session knows
//! (measured: a third of a load generator's CPU with 500 vehicles on one wildcard).
//! Presence changes and handshakes are rare, so the wildcard costs nothing there.
//!
//! What arrives for a vehicle with no link end registered is not lost silently: queries
//! are counted ([`HubStats::unrouted_queries`]) and, like presence changes, reported as
//! [`HubEvent`]s, so that a DR host can wake the twin a vehicle is looking for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use zenoh::sample::SampleKind;

use crate::keys::{self, Role, VehicleId};

/// Most frames queued for one link end before further frames are dropped (and counted);
/// the peer retransmits what is dropped.
pub const MAX_QUEUED_FRAMES: usize = 8192;

/// What reaches one link end from Zenoh.
pub(crate) enum Inbound {
    /// A sealed frame from the peer.
    Frame(zenoh::bytes::ZBytes),
    /// The peer's liveliness token appeared (`true`) or went (`false`).
    Presence(bool),
    /// A handshake query (DR only).
    Query(zenoh::query::Query),
}

/// The sending half of one link end's inbound queue, shared with Zenoh's callbacks.
#[derive(Clone)]
pub(crate) struct Inlet {
    tx: mpsc::UnboundedSender<Inbound>,
    queued_frames: Arc<AtomicUsize>,
    dropped_frames: Arc<AtomicU64>,
}

/// The receiving half of one link end's inbound queue.
pub(crate) struct Outlet {
    rx: mpsc::UnboundedReceiver<Inbound>,
    queued_frames: Arc<AtomicUsize>,
    dropped_frames: Arc<AtomicU64>,
}

/// A new inbound queue.
pub(crate) fn inbound_queue() -> (Inlet, Outlet) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_frames = Arc::new(AtomicUsize::new(0));
    let dropped_frames = Arc::new(AtomicU64::new(0));
    (
        Inlet {
            tx,
            queued_frames: queued_frames.clone(),
            dropped_frames: dropped_frames.clone(),
        },
        Outlet {
            rx,
            queued_frames,
            dropped_frames,
        },
    )
}

impl Inlet {
    /// Queues a frame unless [`MAX_QUEUED_FRAMES`] are waiting already.
    pub(crate) fn frame(&self, payload: zenoh::bytes::ZBytes) {
        if self.queued_frames.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_FRAMES {
            self.queued_frames.fetch_sub(1, Ordering::Relaxed);
            self.dropped_frames.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(Inbound::Frame(payload)).is_err() {
            self.queued_frames.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues a presence change (never dropped: they are rare and each one matters).
    pub(crate) fn presence(&self, present: bool) {
        let _ = self.tx.send(Inbound::Presence(present));
    }

    /// Queues a handshake query.
    pub(crate) fn query(&self, query: zenoh::query::Query) {
        let _ = self.tx.send(Inbound::Query(query));
    }
}

impl Outlet {
    fn taken(&self, item: &Inbound) {
        if matches!(item, Inbound::Frame(_)) {
            self.queued_frames.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The next item; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Inbound> {
        let item = self.rx.recv().await?;
        self.taken(&item);
        Some(item)
    }

    /// An item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Inbound> {
        let item = self.rx.try_recv().ok()?;
        self.taken(&item);
        Some(item)
    }

    /// Frames dropped because the queue was full.
    pub(crate) fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }
}

/// Something a hub received for a vehicle, reported to whoever watches the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// The peer role's liveliness token of `vehicle` appeared or went (reported for every
    /// vehicle, whether a link end is registered for it or not).
    Presence {
        /// The vehicle.
        vehicle: VehicleId,
        /// Whether its token is present now.
        present: bool,
    },
    /// A handshake query for `vehicle` arrived while no link end was registered for it
    /// (the query gets no answer; the vehicle retries).
    Unrouted {
        /// The vehicle.
        vehicle: VehicleId,
    },
}

/// Counters of a hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Link ends registered now.
    pub registered: usize,
    /// Handshake queries for a vehicle with no registered link end.
    pub unrouted_queries: u64,
    /// Keys that name no valid vehicle (dropped).
    pub bad_keys: u64,
}

struct Route {
    generation: u64,
    inlet: Inlet,
}

#[derive(Default)]
struct State {
    routes: HashMap<VehicleId, Route>,
    /// Vehicles whose peer-role token is present.
    present: HashSet<VehicleId>,
    watcher: Option<mpsc::UnboundedSender<HubEvent>>,
}

#[derive(Default)]
struct Counters {
    unrouted_queries: AtomicU64,
    bad_keys: AtomicU64,
}

struct Inner {
    session: zenoh::Session,
    role: Role,
    state: RwLock<State>,
    counters: Counters,
    next_generation: AtomicU64,
}

impl Inner {
    fn vehicle(&self, key: &str) -> Option<VehicleId> {
        let v = keys::vehicle_of(key);
        if v.is_none() {
            self.counters.bad_keys.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    fn on_presence(&self, key: &str, present: bool) {
        let Some(vehicle) = self.vehicle(key) else {
            return;
        };
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let changed = if present {
            state.present.insert(vehicle.clone())
        } else {
            state.present.remove(&vehicle)
        };
        if !changed {
            return;
        }
        if let Some(route) = state.routes.get(&vehicle) {
            route.inlet.presence(present);
        }
        if let Some(w) = &state.watcher {
            let _ = w.send(HubEvent::Presence { vehicle, present });
        }
    }

    fn on_query(&self, query: zenoh::query::Query) {
        let Some(vehicle) = self.vehicle(query.key_expr().as_str()) else {
            return;
        };
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        match state.routes.get(&vehicle) {
            Some(route) => route.inlet.query(query),
            None => {
                self.counters
                    .unrouted_queries
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(w) = &state.watcher {
                    let _ = w.send(HubEvent::Unrouted { vehicle });
                }
                // Dropping the query finalizes it: the vehicle hears no answer and retries.
            }
        }
    }
}

/// Shared declarations for the link ends of one role on one Zenoh session (see the module
/// documentation). Cloning gives another handle to the same hub.
#[derive(Clone)]
pub struct LinkHub {
    inner: Arc<Inner>,
    _declarations: Arc<Declarations>,
}

struct Declarations {
    _presence: zenoh::pubsub::Subscriber<()>,
    _queries: Option<zenoh::query::Queryable<()>>,
}

impl LinkHub {
    /// Declares, on `session`, what link ends of `role` share: a liveliness subscriber for
    /// the peer role's token of every vehicle and, for the DR, a queryable for every
    /// vehicle's handshake key.
    pub async fn declare(session: zenoh::Session, role: Role) -> anyhow::Result<LinkHub> {
        let z = |what: &str, e: zenoh::Error| anyhow::anyhow!("zenoh {what}: {e}");
        let inner = Arc::new(Inner {
            session: session.clone(),
            role,
            state: RwLock::new(State::default()),
            counters: Counters::default(),
            next_generation: AtomicU64::new(1),
        });
        let peer = role.peer();
        let i = inner.clone();
        let presence = session
            .liveliness()
            .declare_subscriber(keys::any_alive(peer))
            .history(true)
            .callback(move |sample| {
                i.on_presence(sample.key_expr().as_str(), sample.kind() == SampleKind::Put)
            })
            .await
            .map_err(|e| z("hub liveliness subscriber", e))?;
        let queries = if role == Role::Dr {
            let i = inner.clone();
            Some(
                session
                    .declare_queryable(keys::any_sync())
                    .callback(move |query| i.on_query(query))
                    .await
                    .map_err(|e| z("hub queryable", e))?,
            )
        } else {
            None
        };
        Ok(LinkHub {
            inner,
            _declarations: Arc::new(Declarations {
                _presence: presence,
                _queries: queries,
            }),
        })
    }

    /// The session the hub declared on.
    pub fn session(&self) -> &zenoh::Session {
        &self.inner.session
    }

    /// The role of the link ends it serves.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Reports every [`HubEvent`] from now on to the returned receiver (replacing an
    /// earlier watcher); vehicles whose token is present already are reported first.
    pub fn watch(&self) -> mpsc::UnboundedReceiver<HubEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        for vehicle in &state.present {
            let _ = tx.send(HubEvent::Presence {
                vehicle: vehicle.clone(),
                present: true,
            });
        }
        state.watcher = Some(tx);
        rx
    }

    /// Whether the peer-role token of `vehicle` is present.
    pub fn is_present(&self, vehicle: &VehicleId) -> bool {
        let state = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        state.present.contains(vehicle)
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        let state = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        let c = &self.inner.counters;
        HubStats {
            registered: state.routes.len(),
            unrouted_queries: c.unrouted_queries.load(Ordering::Relaxed),
            bad_keys: c.bad_keys.load(Ordering::Relaxed),
        }
    }

    /// Routes what arrives for `vehicle` to `inlet` until the registration is dropped; the
    /// peer's presence, if its token is there, is queued at once.
    pub(crate) fn register(&self, vehicle: VehicleId, inlet: Inlet) -> Registration {
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut state = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        if state.present.contains(&vehicle) {
            inlet.presence(true);
        }
        state
            .routes
            .insert(vehicle.clone(), Route { generation, inlet });
        Registration {
            hub: self.inner.clone(),
            vehicle,
            generation,
        }
    }
}

/// A link end's place in a hub; dropping it stops the routing.
pub(crate) struct Registration {
    hub: Arc<Inner>,
    vehicle: VehicleId,
    generation: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.hub.state.write().unwrap_or_else(|p| p.into_inner());
        // A newer link end of the same vehicle may have taken the place already.
        if state
            .routes
            .get(&self.vehicle)
            .is_some_and(|r| r.generation == self.generation)
        {
            state.routes.remove(&self.vehicle);
        }
    }
}
