//! A STAND-IN for Dragonfly's scheduler, used only by bench/fleet.sh.
//!
//! Dragonfly's real scheduler is a Go service (dragonflyoss/dragonfly) that cannot be built
//! here. dfdaemon (Dragonfly's Rust client, crate `dragonfly-client`) will not download anything
//! without a scheduler, so the fleet bench runs this test double instead: it speaks the
//! `scheduler.v2.Scheduler` gRPC service from the `dragonfly-api` crate at the version dfdaemon
//! 1.5.10 locks, plus `grpc.health.v1`, and answers only what dfdaemon calls:
//!
//! - `grpc.health.v1.Health/Check` (service ""): SERVING. dfdaemon's local dynconfig (no
//!   manager) drops schedulers that fail it.
//! - `AnnounceHost`, `DeleteHost`, `ListHosts`: the hosts (ip, gRPC upload port) parents are named by.
//! - `AnnouncePeer` (bidirectional stream), one per peer = one download request on one dfdaemon:
//!   `RegisterPeerRequest` is answered with `NeedBackToSourceResponse` when no *other* host holds
//!   (or is downloading) the task, else with `NormalTaskResponse` whose candidate parents are up
//!   to LIMIT other hosts' peers of the task, finished ones first, then those handed out least.
//!   Unfinished parents are fine: dfdaemon's `SyncPieces` streams a parent's pieces as they land.
//!   A `ReschedulePeerRequest` gets the same answer without the parents it names. The stream is
//!   closed after the peer reports finished or failed, as dfdaemon waits for that.
//!   A register with `metadata_only` (a dfdaemon that already has the whole task) gets
//!   `MetadataOnlyResponse`.
//! - `StatPeer`, `DeletePeer`, `StatTask`, `DeleteTask`: from the same table.
//!
//! Everything else (cache, persistent and persistent-cache tasks, preheat) is UNIMPLEMENTED. No
//! scoring by location, load or bandwidth, no seed peers, no persistence, no TLS: this is not a
//! scheduler anyone should deploy. It is not part of tugboat, which contains no P2P logic.
//!
//! Each decision is one line on stderr; on SIGTERM or SIGINT a summary per task (URL, peers,
//! hosts, peers sent back to source) is printed, which bench/fleet.sh records.
//!
//!   dragonfly-scheduler-standin LISTEN_ADDR [CANDIDATE_PARENT_LIMIT]   (default limit 4)

use dragonfly_api::common::v2::{
    CachePeer, CacheTask, Host, Peer, PersistentCachePeer, PersistentCacheTask, PersistentPeer,
    PersistentTask, Task,
};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::scheduler_server::{Scheduler, SchedulerServer};
use dragonfly_api::scheduler::v2::*;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    Registered,
    Running,
    BackToSource,
    Succeeded,
    Failed,
}

impl PeerState {
    fn name(self) -> &'static str {
        match self {
            PeerState::Registered => "Pending",
            PeerState::Running => "Running",
            PeerState::BackToSource => "BackToSource",
            PeerState::Succeeded => "Succeeded",
            PeerState::Failed => "Failed",
        }
    }
}

struct PeerEntry {
    id: String,
    host_id: String,
    state: PeerState,
}

#[derive(Default)]
struct TaskEntry {
    url: String,
    peers: Vec<PeerEntry>,
    /// How often each host was handed out as a parent of this task (spreads the load).
    handed_out: HashMap<String, u32>,
    /// Peers told to go back to source (kept after the peers are deleted, for the summary).
    back_to_source: u32,
    registered: u32,
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, Host>,
    tasks: HashMap<String, TaskEntry>,
}

#[derive(Clone)]
struct StandIn {
    state: Arc<Mutex<State>>,
    limit: usize,
    started: Instant,
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl State {
    fn host_ip(&self, host_id: &str) -> String {
        self.hosts
            .get(host_id)
            .map(|h| h.ip.clone())
            .unwrap_or_else(|| format!("?{}", short(host_id)))
    }

    /// The answer to a register or reschedule: parents on other hosts, or back to source.
    fn schedule(
        &mut self,
        task_id: &str,
        host_id: &str,
        peer_id: &str,
        excluded_hosts: &HashSet<String>,
        limit: usize,
    ) -> (PeerResponse, String) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return (
                PeerResponse::NeedBackToSourceResponse(NeedBackToSourceResponse {
                    description: Some("stand-in: unknown task".into()),
                }),
                "back-to-source (unknown task)".into(),
            );
        };
        // One candidate per other host: dfdaemon syncs pieces per host, whichever peer is named.
        // (finished, first-seen order, a peer id) per host.
        let mut per_host: Vec<(String, bool, usize, String)> = Vec::new();
        for (order, p) in task.peers.iter().enumerate() {
            if p.host_id == host_id
                || p.state == PeerState::Failed
                || excluded_hosts.contains(&p.host_id)
                || !self.hosts.contains_key(&p.host_id)
            {
                continue;
            }
            match per_host.iter_mut().find(|h| h.0 == p.host_id) {
                Some(entry) => entry.1 &= p.state == PeerState::Succeeded,
                None => per_host.push((
                    p.host_id.clone(),
                    p.state == PeerState::Succeeded,
                    order,
                    p.id.clone(),
                )),
            }
        }
        if per_host.is_empty() {
            task.back_to_source += 1;
            if let Some(p) = task.peers.iter_mut().find(|p| p.id == peer_id) {
                p.state = PeerState::BackToSource;
            }
            return (
                PeerResponse::NeedBackToSourceResponse(NeedBackToSourceResponse {
                    description: Some("stand-in: no other host has this task".into()),
                }),
                "back-to-source".into(),
            );
        }
        per_host.sort_by_key(|(h, finished, order, _)| {
            (
                !*finished,
                task.handed_out.get(h).copied().unwrap_or(0),
                *order,
            )
        });
        per_host.truncate(limit.max(1));
        let task_msg = Task {
            id: task_id.to_string(),
            url: task.url.clone(),
            ..Default::default()
        };
        let mut parents = Vec::new();
        let mut names = Vec::new();
        for (h, finished, _, pid) in &per_host {
            *task.handed_out.entry(h.clone()).or_default() += 1;
            names.push(format!(
                "{}{}",
                self.hosts[h].ip,
                if *finished { "(done)" } else { "" }
            ));
            parents.push(Peer {
                id: pid.clone(),
                state: if *finished { "Succeeded" } else { "Running" }.into(),
                task: Some(task_msg.clone()),
                host: Some(self.hosts[h].clone()),
                ..Default::default()
            });
        }
        (
            PeerResponse::NormalTaskResponse(NormalTaskResponse {
                candidate_parents: parents,
            }),
            format!("parents [{}]", names.join(" ")),
        )
    }

    fn set_peer_state(&mut self, task_id: &str, peer_id: &str, state: PeerState) {
        if let Some(p) = self
            .tasks
            .get_mut(task_id)
            .and_then(|t| t.peers.iter_mut().find(|p| p.id == peer_id))
        {
            p.state = state;
        }
    }

    fn peer_message(&self, task_id: &str, peer: &PeerEntry) -> Peer {
        Peer {
            id: peer.id.clone(),
            state: peer.state.name().into(),
            task: Some(Task {
                id: task_id.to_string(),
                url: self
                    .tasks
                    .get(task_id)
                    .map(|t| t.url.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            host: self.hosts.get(&peer.host_id).cloned(),
            ..Default::default()
        }
    }
}

impl StandIn {
    fn log(&self, line: String) {
        eprintln!("{:9.3} {line}", self.started.elapsed().as_secs_f64());
    }

    /// One message of an AnnouncePeer stream; `true` when the peer is done (close the stream).
    fn on_peer_message(
        &self,
        msg: AnnouncePeerRequest,
        tx: &mpsc::Sender<Result<AnnouncePeerResponse, Status>>,
    ) -> bool {
        let (task_id, host_id, peer_id) = (msg.task_id, msg.host_id, msg.peer_id);
        let mut state = self.state.lock().unwrap();
        let reply = |resp: PeerResponse| {
            // The channel holds a few messages and a peer waits for each answer before sending
            // more, so it is never full; a closed one means the peer is gone.
            let _ = tx.try_send(Ok(AnnouncePeerResponse {
                response: Some(resp),
            }));
        };
        match msg.request {
            Some(PeerRequest::RegisterPeerRequest(register)) => {
                let download = register.download.unwrap_or_default();
                let ip = state.host_ip(&host_id);
                let task = state.tasks.entry(task_id.clone()).or_default();
                if task.url.is_empty() {
                    task.url = download.url.clone();
                }
                task.registered += 1;
                task.peers.retain(|p| p.id != peer_id);
                task.peers.push(PeerEntry {
                    id: peer_id.clone(),
                    host_id: host_id.clone(),
                    state: PeerState::Registered,
                });
                let range = download
                    .range
                    .map(|r| format!(" range={}+{}", r.start, r.length))
                    .unwrap_or_default();
                let (resp, what) = if download.metadata_only {
                    task.peers.last_mut().unwrap().state = PeerState::Succeeded;
                    (
                        PeerResponse::MetadataOnlyResponse(MetadataOnlyResponse {}),
                        "metadata-only".to_string(),
                    )
                } else if download.need_back_to_source {
                    task.back_to_source += 1;
                    task.peers.last_mut().unwrap().state = PeerState::BackToSource;
                    (
                        PeerResponse::NeedBackToSourceResponse(NeedBackToSourceResponse {
                            description: Some("requested by the peer".into()),
                        }),
                        "back-to-source (asked)".to_string(),
                    )
                } else {
                    state.schedule(&task_id, &host_id, &peer_id, &HashSet::new(), self.limit)
                };
                self.log(format!(
                    "register task={} host={ip} peer={}{range} -> {what}",
                    short(&task_id),
                    short(&peer_id)
                ));
                reply(resp);
                false
            }
            Some(PeerRequest::ReschedulePeerRequest(reschedule)) => {
                let excluded: HashSet<String> = reschedule
                    .candidate_parents
                    .iter()
                    .filter_map(|p| p.host.as_ref().map(|h| h.id.clone()))
                    .collect();
                let (resp, what) =
                    state.schedule(&task_id, &host_id, &peer_id, &excluded, self.limit);
                self.log(format!(
                    "reschedule task={} host={} peer={} ({}) -> {what}",
                    short(&task_id),
                    state.host_ip(&host_id),
                    short(&peer_id),
                    reschedule.description.unwrap_or_default()
                ));
                reply(resp);
                false
            }
            Some(PeerRequest::DownloadPeerStartedRequest(_)) => {
                state.set_peer_state(&task_id, &peer_id, PeerState::Running);
                false
            }
            Some(PeerRequest::DownloadPeerBackToSourceStartedRequest(_)) => {
                state.set_peer_state(&task_id, &peer_id, PeerState::BackToSource);
                false
            }
            Some(PeerRequest::DownloadPeerFinishedRequest(_))
            | Some(PeerRequest::DownloadPeerBackToSourceFinishedRequest(_)) => {
                state.set_peer_state(&task_id, &peer_id, PeerState::Succeeded);
                self.log(format!(
                    "finished task={} host={} peer={}",
                    short(&task_id),
                    state.host_ip(&host_id),
                    short(&peer_id)
                ));
                true
            }
            Some(PeerRequest::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
                description,
            }))
            | Some(PeerRequest::DownloadPeerBackToSourceFailedRequest(
                DownloadPeerBackToSourceFailedRequest { description },
            )) => {
                state.set_peer_state(&task_id, &peer_id, PeerState::Failed);
                self.log(format!(
                    "failed task={} host={} peer={}: {}",
                    short(&task_id),
                    state.host_ip(&host_id),
                    short(&peer_id),
                    description.unwrap_or_default()
                ));
                true
            }
            // Piece reports: the stand-in does not score parents, so nothing to record.
            Some(_) | None => false,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn unneeded<T>() -> Reply<T> {
    Err(Status::unimplemented(
        "not implemented by the bench's scheduler stand-in",
    ))
}

#[tonic::async_trait]
impl Scheduler for StandIn {
    type AnnouncePeerStream = ReceiverStream<Result<AnnouncePeerResponse, Status>>;

    async fn announce_peer(
        &self,
        request: Request<Streaming<AnnouncePeerRequest>>,
    ) -> Reply<Self::AnnouncePeerStream> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let me = self.clone();
        tokio::spawn(async move {
            let mut current: Option<(String, String)> = None;
            let mut done = false;
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        current = Some((msg.task_id.clone(), msg.peer_id.clone()));
                        if me.on_peer_message(msg, &tx) {
                            done = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        me.log(format!("announce-peer stream error: {}", status.message()));
                        break;
                    }
                }
            }
            // A stream that ends before the peer said finished or failed: the peer is gone.
            if let (false, Some((task_id, peer_id))) = (done, current) {
                let mut state = me.state.lock().unwrap();
                let still_open = state
                    .tasks
                    .get(&task_id)
                    .and_then(|t| t.peers.iter().find(|p| p.id == peer_id))
                    .is_some_and(|p| p.state != PeerState::Succeeded);
                if still_open {
                    state.set_peer_state(&task_id, &peer_id, PeerState::Failed);
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat_peer(&self, request: Request<StatPeerRequest>) -> Reply<Peer> {
        let req = request.into_inner();
        let state = self.state.lock().unwrap();
        state
            .tasks
            .get(&req.task_id)
            .and_then(|t| t.peers.iter().find(|p| p.id == req.peer_id))
            .map(|p| Response::new(state.peer_message(&req.task_id, p)))
            .ok_or_else(|| Status::not_found("peer not found"))
    }

    async fn delete_peer(&self, request: Request<DeletePeerRequest>) -> Reply<()> {
        let req = request.into_inner();
        if let Some(t) = self.state.lock().unwrap().tasks.get_mut(&req.task_id) {
            t.peers.retain(|p| p.id != req.peer_id);
        }
        Ok(Response::new(()))
    }

    async fn stat_task(&self, request: Request<StatTaskRequest>) -> Reply<Task> {
        let req = request.into_inner();
        let state = self.state.lock().unwrap();
        let t = state
            .tasks
            .get(&req.task_id)
            .ok_or_else(|| Status::not_found("task not found"))?;
        let available = t.peers.iter().any(|p| p.state == PeerState::Succeeded);
        Ok(Response::new(Task {
            id: req.task_id.clone(),
            url: t.url.clone(),
            state: if available { "Succeeded" } else { "Running" }.into(),
            peer_count: t.peers.len() as u32,
            has_available_peer: available,
            ..Default::default()
        }))
    }

    async fn delete_task(&self, request: Request<DeleteTaskRequest>) -> Reply<()> {
        let req = request.into_inner();
        if let Some(t) = self.state.lock().unwrap().tasks.get_mut(&req.task_id) {
            t.peers.retain(|p| p.host_id != req.host_id);
        }
        Ok(Response::new(()))
    }

    async fn announce_host(&self, request: Request<AnnounceHostRequest>) -> Reply<()> {
        let host = request
            .into_inner()
            .host
            .ok_or_else(|| Status::invalid_argument("host missing"))?;
        let mut state = self.state.lock().unwrap();
        if !state.hosts.contains_key(&host.id) {
            self.log(format!(
                "host {} ip={} upload-port={} download-port={} proxy-port={}",
                host.hostname, host.ip, host.port, host.download_port, host.proxy_port
            ));
        }
        state.hosts.insert(host.id.clone(), host);
        Ok(Response::new(()))
    }

    async fn list_hosts(&self, _request: Request<ListHostsRequest>) -> Reply<ListHostsResponse> {
        let state = self.state.lock().unwrap();
        Ok(Response::new(ListHostsResponse {
            hosts: state.hosts.values().cloned().collect(),
        }))
    }

    async fn delete_host(&self, request: Request<DeleteHostRequest>) -> Reply<()> {
        let host_id = request.into_inner().host_id;
        let mut state = self.state.lock().unwrap();
        state.hosts.remove(&host_id);
        for t in state.tasks.values_mut() {
            t.peers.retain(|p| p.host_id != host_id);
        }
        Ok(Response::new(()))
    }

    type AnnounceCachePeerStream = ReceiverStream<Result<AnnounceCachePeerResponse, Status>>;
    async fn announce_cache_peer(
        &self,
        _request: Request<Streaming<AnnounceCachePeerRequest>>,
    ) -> Reply<Self::AnnounceCachePeerStream> {
        unneeded()
    }
    async fn stat_cache_peer(&self, _request: Request<StatCachePeerRequest>) -> Reply<CachePeer> {
        unneeded()
    }
    async fn delete_cache_peer(&self, _request: Request<DeleteCachePeerRequest>) -> Reply<()> {
        unneeded()
    }
    async fn stat_cache_task(&self, _request: Request<StatCacheTaskRequest>) -> Reply<CacheTask> {
        unneeded()
    }
    async fn delete_cache_task(&self, _request: Request<DeleteCacheTaskRequest>) -> Reply<()> {
        unneeded()
    }

    type AnnouncePersistentPeerStream =
        ReceiverStream<Result<AnnouncePersistentPeerResponse, Status>>;
    async fn announce_persistent_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentPeerRequest>>,
    ) -> Reply<Self::AnnouncePersistentPeerStream> {
        unneeded()
    }
    async fn stat_persistent_peer(
        &self,
        _request: Request<StatPersistentPeerRequest>,
    ) -> Reply<PersistentPeer> {
        unneeded()
    }
    async fn delete_persistent_peer(
        &self,
        _request: Request<DeletePersistentPeerRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn upload_persistent_task_started(
        &self,
        _request: Request<UploadPersistentTaskStartedRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn upload_persistent_task_finished(
        &self,
        _request: Request<UploadPersistentTaskFinishedRequest>,
    ) -> Reply<PersistentTask> {
        unneeded()
    }
    async fn upload_persistent_task_failed(
        &self,
        _request: Request<UploadPersistentTaskFailedRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn stat_persistent_task(
        &self,
        _request: Request<StatPersistentTaskRequest>,
    ) -> Reply<PersistentTask> {
        unneeded()
    }
    async fn delete_persistent_task(
        &self,
        _request: Request<DeletePersistentTaskRequest>,
    ) -> Reply<()> {
        unneeded()
    }

    type AnnouncePersistentCachePeerStream =
        ReceiverStream<Result<AnnouncePersistentCachePeerResponse, Status>>;
    async fn announce_persistent_cache_peer(
        &self,
        _request: Request<Streaming<AnnouncePersistentCachePeerRequest>>,
    ) -> Reply<Self::AnnouncePersistentCachePeerStream> {
        unneeded()
    }
    async fn stat_persistent_cache_peer(
        &self,
        _request: Request<StatPersistentCachePeerRequest>,
    ) -> Reply<PersistentCachePeer> {
        unneeded()
    }
    async fn delete_persistent_cache_peer(
        &self,
        _request: Request<DeletePersistentCachePeerRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn upload_persistent_cache_task_started(
        &self,
        _request: Request<UploadPersistentCacheTaskStartedRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn upload_persistent_cache_task_finished(
        &self,
        _request: Request<UploadPersistentCacheTaskFinishedRequest>,
    ) -> Reply<PersistentCacheTask> {
        unneeded()
    }
    async fn upload_persistent_cache_task_failed(
        &self,
        _request: Request<UploadPersistentCacheTaskFailedRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn stat_persistent_cache_task(
        &self,
        _request: Request<StatPersistentCacheTaskRequest>,
    ) -> Reply<PersistentCacheTask> {
        unneeded()
    }
    async fn delete_persistent_cache_task(
        &self,
        _request: Request<DeletePersistentCacheTaskRequest>,
    ) -> Reply<()> {
        unneeded()
    }
    async fn preheat_image(&self, _request: Request<PreheatImageRequest>) -> Reply<()> {
        unneeded()
    }
    async fn stat_image(&self, _request: Request<StatImageRequest>) -> Reply<StatImageResponse> {
        unneeded()
    }
    async fn preheat_file(&self, _request: Request<PreheatFileRequest>) -> Reply<()> {
        unneeded()
    }
    async fn stat_file(&self, _request: Request<StatFileRequest>) -> Reply<StatFileResponse> {
        unneeded()
    }
}

fn summary(state: &State) {
    eprintln!(
        "summary: {} hosts, {} tasks",
        state.hosts.len(),
        state.tasks.len()
    );
    let mut tasks: Vec<_> = state.tasks.iter().collect();
    tasks.sort_by(|a, b| a.1.url.cmp(&b.1.url));
    for (id, t) in tasks {
        let hosts: HashSet<&str> = t.peers.iter().map(|p| p.host_id.as_str()).collect();
        eprintln!(
            "summary task={} registered={} hosts={} back_to_source={} url={}",
            short(id),
            t.registered,
            hosts.len(),
            t.back_to_source,
            t.url
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: dragonfly-scheduler-standin LISTEN_ADDR [CANDIDATE_PARENT_LIMIT]");
        eprintln!("a stand-in for Dragonfly's scheduler, for bench/fleet.sh only");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("LISTEN_ADDR, e.g. 10.0.0.254:8002");
    let limit = args
        .get(2)
        .map(|l| l.parse().expect("CANDIDATE_PARENT_LIMIT"))
        .unwrap_or(4);
    let standin = StandIn {
        state: Arc::new(Mutex::new(State::default())),
        limit,
        started: Instant::now(),
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SchedulerServer<StandIn>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    eprintln!("scheduler stand-in (not Dragonfly's scheduler) listening on {addr}, candidate parent limit {limit}");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            SchedulerServer::new(standin.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
        .serve_with_shutdown(addr, shutdown)
        .await
        .expect("serve");
    summary(&standin.state.lock().unwrap());
}
