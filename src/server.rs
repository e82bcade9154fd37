//! `regis serve`: the hub's ingress, bus and a worker for every region, in one process.
//!
//! [`Server::start`] (embedded bus) or [`Server::start_nats`] (NATS) opens the bus, starts
//! the worker of every region whose `worker` is not `"remote"` and the HTTP listener, and
//! returns at once; [`Server::stop`] drains: the listener stops accepting, in-flight requests
//! finish, workers finish and settle the batch in hand, the bus persists its progress. Tests
//! start a server in-process on port 0 exactly as `regis serve` does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::bus::embedded::{EmbeddedBus, StoreOptions};
use crate::bus::nats::{NatsBus, NatsConfig, NatsOptions};
use crate::bus::{Bus, BusError};
use crate::config::{Config, WorkerPlacement};
use crate::health::RedisHealth;
use crate::hub::Hub;
use crate::ingress::auth::{self, HttpAuth, TokenAuth};
use crate::ingress::http::{ApiState, RegionRuntime, router};
use crate::ingress::lease::LeaseState;
use crate::ingress::resp::{RespServer, RespStartError};
use crate::latency::LatencyWindow;
use crate::tls::TlsListener;
use crate::worker::{self, WorkerSettings};

/// A running hub.
pub struct Server<B: Bus> {
    http_addr: SocketAddr,
    hub: Arc<Hub<B>>,
    bus: B,
    regions: Arc<Vec<RegionRuntime>>,
    stop_http: CancellationToken,
    stop_workers: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    workers: JoinSet<()>,
    resp: Option<RespServer>,
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bus could not be opened.
    #[error("{0}")]
    Bus(#[from] crate::bus::BusError),
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}; is another process using it? change http.listen")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A region's Redis URL is unusable.
    #[error("{0}")]
    Redis(#[from] crate::apply::BadRedisUrl),
    /// The RESP listener could not start.
    #[error("{0}")]
    Resp(#[from] RespStartError),
    /// `[auth]` cannot be used (an environment variable went missing since the check).
    #[error("`{0}`: {1}")]
    Auth(String, String),
    /// The HTTPS certificate or key cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Opens the embedded bus in `config.data_dir` for every region of `config`.
pub fn open_embedded(config: &Config) -> Result<EmbeddedBus, BusError> {
    let regions: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
    EmbeddedBus::open(
        &config.data_dir,
        &regions,
        StoreOptions {
            visibility_timeout: config.delivery.visibility_timeout,
            max_receives: config.delivery.max_receives,
            dead_letter_retention: config.delivery.dead_letter_retention,
        },
    )
}

/// Connects to the NATS bus `nats` for every region of `config`.
pub async fn connect_nats(config: &Config, nats: &NatsConfig) -> Result<NatsBus, BusError> {
    let regions = config.regions.iter().map(|r| r.name.clone()).collect();
    NatsBus::connect(nats, NatsOptions::from_config(config, regions)).await
}

impl Server<EmbeddedBus> {
    /// Starts a hub on the embedded bus described by `config`.
    pub async fn start(config: &Config) -> Result<Server<EmbeddedBus>, StartError> {
        let bus = open_embedded(config)?;
        if config.max_bus_bytes.is_some() {
            bus.limit_size(config.max_bus_bytes).await?;
        }
        Server::start_with(config, bus).await
    }
}

impl Server<NatsBus> {
    /// Starts a hub on the NATS bus `nats`; the queues of regions no longer in `config` are
    /// removed, as the embedded bus does.
    pub async fn start_nats(
        config: &Config,
        nats: &NatsConfig,
    ) -> Result<Server<NatsBus>, StartError> {
        let bus = connect_nats(config, nats).await?;
        bus.remove_unconfigured_regions().await?;
        Server::start_with(config, bus).await
    }

    /// Drains and stops, then flushes the NATS connection.
    pub async fn shutdown(self) {
        let bus = self.bus.clone();
        self.stop().await;
        bus.close().await;
    }
}

impl<B: Bus> Server<B> {
    /// Starts a hub on `bus`.
    pub async fn start_with(config: &Config, bus: B) -> Result<Server<B>, StartError> {
        let prometheus = crate::metrics::install_prometheus();
        let hub = Hub::new(
            bus.clone(),
            config.node_id,
            config.convergence,
            config.max_message_bytes,
            config.databases(),
        )
        .await?;
        let applier = Applier::new(config.convergence, config.tombstone_ttl());
        let stop_workers = CancellationToken::new();
        let mut workers = JoinSet::new();
        let mut runtimes = Vec::new();
        for region in &config.regions {
            let latency = Arc::new(LatencyWindow::default());
            if region.worker == WorkerPlacement::Remote {
                // The hub may have no route to a remote region's Redis: its reachability
                // stays unknown here (and exports no `regis_redis_up`). Its applied rate
                // and latency are recorded into `latency` by the lease API as the remote
                // worker's Acks arrive.
                runtimes.push(RegionRuntime {
                    name: region.name.clone(),
                    latency,
                    health: Arc::new(RedisHealth::unmonitored()),
                });
                continue;
            }
            let health = Arc::new(RedisHealth::new(&region.name));
            worker::spawn(
                WorkerSettings::from_config(config, region, region.redis.clone()),
                bus.clone(),
                applier.clone(),
                latency.clone(),
                health.clone(),
                stop_workers.clone(),
                &mut workers,
            )?;
            runtimes.push(RegionRuntime {
                name: region.name.clone(),
                latency,
                health,
            });
        }
        let regions = Arc::new(runtimes);
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.listen,
            source,
        })?;
        // Remote workers, auth and TLS (issue 6).
        let auth = match &config.auth {
            Some(auth) => Some(Arc::new(
                HttpAuth::new(auth).map_err(|(key, problem)| StartError::Auth(key, problem))?,
            )),
            None => None,
        };
        auth::warn_if_exposed(http_addr, auth.as_deref());
        let tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key, "http")?),
            _ => None,
        };
        let resp = match (&config.resp, &config.auth) {
            (Some(resp), Some(auth_config)) => {
                let tokens = auth_config
                    .resolve()
                    .map_err(|(key, problem)| StartError::Auth(key, problem))?;
                let authenticator = TokenAuth::new(tokens, resp.password.clone());
                Some(RespServer::start_with_auth(resp, hub.clone(), authenticator).await?)
            }
            (Some(resp), None) => Some(RespServer::start(resp, hub.clone()).await?),
            (None, _) => None,
        };
        let stop_http = CancellationToken::new();
        let app = router(ApiState {
            hub: hub.clone(),
            bus: bus.clone(),
            regions: regions.clone(),
            prometheus,
            lease: Arc::new(LeaseState::from_config(config, stop_http.clone())),
            auth,
        });
        let stopping = stop_http.clone();
        let https = tls.is_some();
        let http = tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match TlsListener::new(listener, acceptor) {
                    Ok(listener) => {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async move { stopping.cancelled().await })
                            .await
                    }
                    Err(err) => Err(err),
                },
                None => {
                    // Small answers (a lease, an ack) must not wait for Nagle's algorithm
                    // and the peer's delayed ACK: that is 40 ms per round trip.
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stopping.cancelled().await })
                        .await
                }
            };
            if let Err(err) = result {
                tracing::error!(error = %err, "HTTP listener failed");
            }
        });
        if https {
            tracing::info!(%http_addr, "the HTTP API speaks HTTPS only");
        }
        tracing::info!(%http_addr, regions = config.regions.len(), convergence = %config.convergence, "regis hub started");
        Ok(Server {
            http_addr,
            hub,
            bus,
            regions,
            stop_http,
            stop_workers,
            http,
            workers,
            resp,
        })
    }

    /// Where the RESP listener listens, when `[resp]` is configured.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_ref().map(RespServer::addr)
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The hub, for in-process publishing.
    pub fn hub(&self) -> &Arc<Hub<B>> {
        &self.hub
    }

    /// The bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// Per-region runtime figures.
    pub fn regions(&self) -> &Arc<Vec<RegionRuntime>> {
        &self.regions
    }

    /// Drains and stops: ingress first, then workers (each settles its batch), then the bus.
    pub async fn stop(mut self) {
        self.stop_http.cancel();
        if let Some(resp) = self.resp.take() {
            resp.stop().await;
        }
        let _ = (&mut self.http).await;
        self.stop_workers.cancel();
        while self.workers.join_next().await.is_some() {}
        tracing::info!("regis hub stopped");
    }
}

impl Server<EmbeddedBus> {
    /// Drains and stops, then closes the embedded bus so its progress is on disk.
    pub async fn shutdown(self) {
        let bus = self.bus.clone();
        self.stop().await;
        bus.close().await;
    }
}
