//! A mock WhatsApp Cloud API on 127.0.0.1:0 that speaks Meta's shapes.
//!
//! - `POST /{version}/{phone_number_id}/messages` with `Authorization: Bearer {TOKEN}`;
//! - 200 `{"messaging_product":"whatsapp","contacts":[{"input","wa_id"}],"messages":[{"id":"wamid.…"}]}`;
//! - Meta's error envelope `{"error":{"message","type","code","error_data":{"messaging_product",
//!   "details"},"error_subcode"?,"fbtrace_id"}}` under whatever HTTP status a test scripts;
//! - HTML 502 bodies, slow answers, accept-then-drop (the message is recorded, then the
//!   connection is shut without an answer), held answers released by the test, 200s without a
//!   wamid;
//! - optionally ([`MockMeta::finish_when_cut`]), requests processed to their end even when
//!   their client is gone;
//! - optional limits like Meta's: a per-number token bucket (`rate_per_second`, bucket of one
//!   second) answering 130429, and a per-recipient pair interval answering 131056;
//! - a configurable latency for every answer;
//! - Meta's status webhooks ([`MockMeta::send_webhooks`]): after accepting a message, signed
//!   `sent`, `delivered`, `read` statuses (or `sent`, `failed` for [`Reply::AcceptThenFail`]),
//!   carrying the message's `biz_opaque_callback_data`, POSTed to the runner after a delay,
//!   optionally duplicated and out of order; with [`Webhooks::retry`], like Meta, a webhook not
//!   answered 2xx (refused, reset, an error status) is sent again until it is, to whichever of
//!   the [`Receivers`] is there (the chaos suite's daemons come and go on new ports).
//! - more phone number ids, each with its own token and script ([`MockMeta::add_number`]).
//!
//! Every accepted message is recorded with its `biz_opaque_callback_data` and body, so tests
//! can assert "exactly one accepted send per message". Replies are scripted per test: a queue
//! consumed one per request; an empty queue accepts.
//!
//! Self-contained (axum, tokio, serde_json, reqwest, the crate's signing): the delivery benchmark
//! includes this file too.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::IncomingStream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// The access token the mock accepts.
pub const TOKEN: &str = "mock-access-token-3f9a";
/// The phone number id the mock serves.
pub const PHONE_NUMBER_ID: &str = "106540352242922";

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a wamid (subject to the limits).
    Accept,
    /// Meta's error envelope with `code` under HTTP `status`; nothing is accepted.
    Error {
        status: u16,
        code: i64,
        details: &'static str,
        retry_after: Option<u64>,
    },
    /// An HTML error page (a proxy in front of Meta), e.g. 502.
    Html(u16),
    /// Accepted and recorded at once, answered after the delay (past the client's timeout).
    SlowAccept(Duration),
    /// Accepted and recorded, then the connection is shut without an answer.
    AcceptThenDrop,
    /// Accepted and recorded at once; the answer waits until [`MockMeta::release`] (a worker
    /// can be killed between the send and the answer).
    Hold,
    /// Accepted and recorded, answered 200 with a body that is not JSON.
    AcceptGarbage,
    /// Accepted and answered 200; the status webhooks then say `sent` and `failed` with `code`
    /// (an asynchronous failure, e.g. 131026).
    AcceptThenFail(i64),
}

/// Where and how the mock sends status webhooks.
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// The runner's `/webhooks/whatsapp`.
    pub url: String,
    /// `whatsapp.app_secret`: the webhooks are signed with it.
    pub secret: String,
    /// Before the first status of a message, and between its statuses.
    pub delay: Duration,
    /// Every status is sent twice.
    pub duplicates: bool,
    /// The statuses of a message are sent newest first (`read` before `delivered` before `sent`).
    pub reorder: bool,
    /// The webhooks wait for [`MockMeta::release_webhooks`].
    pub hold: bool,
    /// Where to send them instead of `url`: each attempt goes to the next URL of the list
    /// (round robin), as it is at that moment.
    pub receivers: Option<Receivers>,
    /// Like Meta (which retries for days): a webhook not answered 2xx is sent again after this
    /// pause, until it is. `None`: each webhook is sent once, whatever the answer.
    pub retry: Option<Duration>,
}

/// The URLs webhooks may go to, changed while they are being sent (daemons restarting).
#[derive(Debug, Clone, Default)]
pub struct Receivers {
    urls: Arc<Mutex<Vec<String>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receivers {
    /// Replaces the list.
    pub fn set(&self, urls: Vec<String>) {
        *self.urls.lock().unwrap() = urls;
    }

    /// The next URL, round robin; `None` while the list is empty.
    fn pick(&self) -> Option<String> {
        let urls = self.urls.lock().unwrap();
        if urls.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(urls[i % urls.len()].clone())
    }
}

impl Webhooks {
    pub fn to(url: String, secret: &str) -> Webhooks {
        Webhooks {
            url,
            secret: secret.to_string(),
            delay: Duration::ZERO,
            duplicates: false,
            reorder: false,
            hold: false,
            receivers: None,
            retry: None,
        }
    }
}

impl Reply {
    pub fn error(status: u16, code: i64) -> Reply {
        Reply::Error {
            status,
            code,
            details: "mock details",
            retry_after: None,
        }
    }
}

/// A message the mock accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The job id, from `biz_opaque_callback_data` (`outbound-runner:{job}:{seq}`).
    pub job: String,
    /// `biz_opaque_callback_data` as sent.
    pub callback: String,
    pub to: String,
    /// The request body without the envelope fields.
    pub message: Value,
    pub wamid: String,
    pub at: Instant,
    /// The phone number id it was sent from (the URL's).
    pub phone: String,
    /// When its request arrived (before the mock's latency): what Meta's counters see.
    pub arrived: Instant,
}

/// Limits like Meta's; `None` is unlimited.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub rate_per_second: Option<u32>,
    pub pair_interval: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    accepted: Vec<Accepted>,
    /// Requests answered with an error, by code.
    refused: HashMap<i64, u64>,
    latency: Duration,
    limits: Limits,
    bucket: Option<(f64, Instant)>,
    last_to: HashMap<String, Instant>,
    next_id: u64,
    /// Every request body seen, in order.
    requests: Vec<Value>,
    authorizations: Vec<Option<String>>,
    webhooks: Option<Webhooks>,
    /// The runner's answers to the webhooks sent, in order (every attempt).
    webhook_answers: Vec<u16>,
    /// Attempts that were not answered 2xx and were sent again ([`Webhooks::retry`]).
    webhook_retries: u64,
    /// See [`MockMeta::finish_when_cut`].
    finish_when_cut: bool,
    /// More phone number ids served, with their tokens.
    numbers: HashMap<String, String>,
    /// Answers scripted for one phone number id (before the shared script).
    scripts: HashMap<String, VecDeque<Reply>>,
}

struct Shared {
    inner: Mutex<Inner>,
    seen: watch::Sender<u64>,
    recorded: watch::Sender<u64>,
    /// Counts webhooks answered (with any status).
    webhooks_sent: watch::Sender<u64>,
    webhooks_released: watch::Sender<bool>,
    /// Accepted messages whose status webhooks are not all sent yet (with [`Webhooks::retry`]:
    /// not all answered 2xx).
    webhooks_pending: watch::Sender<u64>,
    hold: Semaphore,
}

/// A running mock; stops when dropped.
pub struct MockMeta {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for MockMeta {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockMeta {
    pub async fn start() -> MockMeta {
        Self::start_with(Limits::default(), Duration::ZERO).await
    }

    pub async fn start_with(limits: Limits, latency: Duration) -> MockMeta {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                limits,
                latency,
                ..Default::default()
            }),
            seen: watch::channel(0).0,
            recorded: watch::channel(0).0,
            webhooks_sent: watch::channel(0).0,
            webhooks_released: watch::channel(false).0,
            webhooks_pending: watch::channel(0).0,
            hold: Semaphore::new(0),
        });
        let app = Router::new()
            .route("/{version}/{phone}/messages", post(messages))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Conn>()).await;
        });
        MockMeta { addr, shared, task }
    }

    /// `whatsapp.api_base` for this mock.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// Queues answers for the next requests (an empty queue accepts).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner().script.extend(replies);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.inner().latency = latency;
    }

    /// Like Meta's servers: a request that arrived is processed to its end (accepted, its
    /// webhooks sent) even when its client is gone meanwhile (killed mid-request). By default
    /// the mock stops handling a request whose client went away (within its latency), like any
    /// HTTP handler.
    pub fn finish_when_cut(&self, on: bool) {
        self.inner().finish_when_cut = on;
    }

    /// Serves another phone number id, with its own access token.
    pub fn add_number(&self, phone: &str, token: &str) {
        self.inner().numbers.insert(phone.into(), token.into());
    }

    /// Queues answers for the next requests to one phone number id.
    pub fn script_for(&self, phone: &str, replies: impl IntoIterator<Item = Reply>) {
        self.inner()
            .scripts
            .entry(phone.into())
            .or_default()
            .extend(replies);
    }

    /// Accepted messages sent from one phone number id.
    pub fn accepted_from(&self, phone: &str) -> Vec<Accepted> {
        self.inner()
            .accepted
            .iter()
            .filter(|a| a.phone == phone)
            .cloned()
            .collect()
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.shared.hold.add_permits(n);
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.inner().accepted.clone()
    }

    /// Accepted messages of one job, in arrival order.
    pub fn accepted_for(&self, job: i64) -> Vec<Accepted> {
        let job = job.to_string();
        self.inner()
            .accepted
            .iter()
            .filter(|a| a.job == job)
            .cloned()
            .collect()
    }

    /// How often each (job, message body) was accepted: every value is 1 when nothing was sent
    /// twice.
    pub fn accepted_per_message(&self) -> HashMap<(String, String), usize> {
        let mut out = HashMap::new();
        for a in self.inner().accepted.iter() {
            *out.entry((a.job.clone(), a.message.to_string()))
                .or_insert(0) += 1;
        }
        out
    }

    /// Requests answered with `code`.
    pub fn refused(&self, code: i64) -> u64 {
        self.inner().refused.get(&code).copied().unwrap_or(0)
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.inner().requests.clone()
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.inner().authorizations.clone()
    }

    /// Counts requests as they arrive (before any latency or hold).
    pub fn seen(&self) -> watch::Receiver<u64> {
        self.shared.seen.subscribe()
    }

    /// Counts accepted messages as they are recorded.
    pub fn recorded(&self) -> watch::Receiver<u64> {
        self.shared.recorded.subscribe()
    }

    /// From now on, every accepted message is followed by its status webhooks.
    pub fn send_webhooks(&self, webhooks: Webhooks) {
        self.inner().webhooks = Some(webhooks);
    }

    /// Lets held webhooks go (see [`Webhooks::hold`]).
    pub fn release_webhooks(&self) {
        self.shared.webhooks_released.send_replace(true);
    }

    /// Counts webhooks the runner answered.
    pub fn webhooks_sent(&self) -> watch::Receiver<u64> {
        self.shared.webhooks_sent.subscribe()
    }

    /// The runner's answers to the webhooks, in order.
    pub fn webhook_answers(&self) -> Vec<u16> {
        self.inner().webhook_answers.clone()
    }

    /// Webhook attempts sent again because the one before was not answered 2xx.
    pub fn webhook_retries(&self) -> u64 {
        self.inner().webhook_retries
    }

    /// Waits up to `within` until every accepted message's status webhooks were sent (with
    /// [`Webhooks::retry`]: answered 2xx). Whether they were.
    pub async fn webhooks_done(&self, within: Duration) -> bool {
        let mut rx = self.shared.webhooks_pending.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A webhook body with `statuses` for [`PHONE_NUMBER_ID`].
pub fn webhook_body(statuses: Vec<Value>) -> Value {
    webhook_body_for(PHONE_NUMBER_ID, statuses)
}

/// A webhook body with `statuses` for the number `phone_number_id`.
pub fn webhook_body_for(phone_number_id: &str, statuses: Vec<Value>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "statuses": statuses,
        }}]}],
    })
}

/// One status as Meta writes it; `failed` carries `error` (code, title).
pub fn status_json(
    wamid: &str,
    status: &str,
    callback: &str,
    timestamp: i64,
    error: Option<(i64, &str)>,
) -> Value {
    let mut s = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp.to_string(),
        "recipient_id": "15551234567",
        "biz_opaque_callback_data": callback,
        "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"},
    });
    if let Some((code, title)) = error {
        s["errors"] = json!([{"code": code, "title": title, "message": title,
            "error_data": {"details": "mock details"}, "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]);
    }
    s
}

/// POSTs `body` to `url` signed with `secret`; the answer's status.
pub async fn post_signed(url: &str, secret: &str, body: &[u8]) -> u16 {
    let signature = outbound_runner::http::webhooks::sign(secret.as_bytes(), body);
    webhook_client()
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn webhook_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap()
        })
        .clone()
}

/// The status webhooks of one accepted message, sent on a task of their own.
fn spawn_webhooks(
    shared: Arc<Shared>,
    hooks: Webhooks,
    phone: String,
    wamid: String,
    callback: String,
    fail: Option<i64>,
) {
    shared.webhooks_pending.send_modify(|n| *n += 1);
    tokio::spawn(async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut statuses: Vec<Value> = match fail {
            Some(code) => vec![
                status_json(&wamid, "sent", &callback, now, None),
                status_json(
                    &wamid,
                    "failed",
                    &callback,
                    now + 1,
                    Some((code, "Message undeliverable")),
                ),
            ],
            None => vec![
                status_json(&wamid, "sent", &callback, now, None),
                status_json(&wamid, "delivered", &callback, now + 1, None),
                status_json(&wamid, "read", &callback, now + 2, None),
            ],
        };
        if hooks.reorder {
            statuses.reverse();
        }
        if hooks.hold {
            let mut open = shared.webhooks_released.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
        for status in statuses {
            tokio::time::sleep(hooks.delay).await;
            let body = serde_json::to_vec(&webhook_body_for(&phone, vec![status])).unwrap();
            let times = if hooks.duplicates { 2 } else { 1 };
            for _ in 0..times {
                loop {
                    let url = match &hooks.receivers {
                        Some(r) => r.pick(),
                        None => Some(hooks.url.clone()),
                    };
                    // No receiver at all: as refused.
                    let answer = match url {
                        Some(url) => post_signed(&url, &hooks.secret, &body).await,
                        None => 0,
                    };
                    let again = hooks.retry.filter(|_| !(200..300).contains(&answer));
                    {
                        let mut inner = shared.inner.lock().unwrap();
                        inner.webhook_answers.push(answer);
                        if again.is_some() {
                            inner.webhook_retries += 1;
                        }
                    }
                    shared.webhooks_sent.send_modify(|n| *n += 1);
                    match again {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => break,
                    }
                }
            }
        }
        shared.webhooks_pending.send_modify(|n| *n -= 1);
    });
}

/// The connection a request came on, so accept-then-drop can shut it. Holds a duplicate of
/// the socket's descriptor; `shutdown` acts on the socket itself.
#[derive(Clone)]
struct Conn(Option<Arc<std::net::TcpStream>>);

impl Connected<IncomingStream<'_, TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        // Like Meta's front ends: no Nagle delay on small answers.
        let _ = stream.io().set_nodelay(true);
        let dup = stream
            .io()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Arc::new(std::net::TcpStream::from(fd)));
        Conn(dup)
    }
}

const ENVELOPE_FIELDS: [&str; 4] = [
    "messaging_product",
    "recipient_type",
    "to",
    "biz_opaque_callback_data",
];

async fn messages(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path((_version, phone)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let detached = shared.inner.lock().unwrap().finish_when_cut;
    let handling = handle(shared, conn, phone, headers, body);
    if detached {
        // On a task of its own: it runs to its end even if this future is dropped.
        tokio::spawn(handling)
            .await
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    } else {
        handling.await
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    phone: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let arrived = Instant::now();
    shared.seen.send_modify(|n| *n += 1);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let (latency, token) = {
        let mut inner = shared.inner.lock().unwrap();
        inner.authorizations.push(auth.clone());
        inner.requests.push(parsed.clone().unwrap_or(Value::Null));
        (inner.latency, inner.numbers.get(&phone).cloned())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let known = phone == PHONE_NUMBER_ID || token.is_some();
    let token = token.unwrap_or_else(|| TOKEN.to_string());
    if auth.as_deref() != Some(&format!("Bearer {token}")) {
        return meta_error(&shared, 401, 190, "Invalid OAuth access token", None);
    }
    if !known {
        return meta_error(&shared, 400, 100, "Unknown phone number id", None);
    }
    let Some(req) = parsed.filter(|v| {
        v.get("messaging_product") == Some(&json!("whatsapp"))
            && v.get("to").is_some_and(Value::is_string)
            && v.get("type").is_some_and(Value::is_string)
    }) else {
        return meta_error(
            &shared,
            400,
            100,
            "(#100) Invalid parameter: messaging_product, to and type are required",
            None,
        );
    };

    let reply = {
        let mut inner = shared.inner.lock().unwrap();
        let own = inner.scripts.get_mut(&phone).and_then(VecDeque::pop_front);
        own.or_else(|| inner.script.pop_front())
            .unwrap_or(Reply::Accept)
    };
    let (status, code, details, retry_after) = match reply {
        Reply::Error {
            status,
            code,
            details,
            retry_after,
        } => (status, code, details, retry_after),
        Reply::Html(status) => {
            return (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                format!("<html><head><title>{status}</title></head><body><h1>{status} Bad Gateway</h1></body></html>"),
            )
                .into_response();
        }
        accepting => {
            if let Some(limited) = limit(&shared, &req) {
                return limited;
            }
            let (wamid, to) = record(&shared, &req, &phone, arrived);
            let hooks = shared.inner.lock().unwrap().webhooks.clone();
            if let Some(hooks) = hooks {
                let callback = req["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let fail = match accepting {
                    Reply::AcceptThenFail(code) => Some(code),
                    _ => None,
                };
                spawn_webhooks(
                    shared.clone(),
                    hooks,
                    phone.clone(),
                    wamid.clone(),
                    callback,
                    fail,
                );
            }
            if matches!(accepting, Reply::Hold) {
                shared.hold.acquire().await.unwrap().forget();
            }
            return match accepting {
                Reply::SlowAccept(delay) => {
                    tokio::time::sleep(delay).await;
                    ok(&wamid, &to)
                }
                Reply::AcceptThenDrop => {
                    if let Some(sock) = &conn.0 {
                        let _ = sock.shutdown(std::net::Shutdown::Both);
                    }
                    // The answer is written to a closed socket: the client never sees it.
                    ok(&wamid, &to)
                }
                Reply::AcceptGarbage => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html>ok</html>",
                )
                    .into_response(),
                _ => ok(&wamid, &to),
            };
        }
    };
    let mut response = meta_error(&shared, status, code, details, None);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
    }
    response
}

/// Meta's limits: the number's throughput (130429), the recipient's pair rate (131056).
fn limit(shared: &Shared, req: &Value) -> Option<Response> {
    let now = Instant::now();
    let to = req["to"].as_str().unwrap_or_default().to_string();
    let (rate_hit, pair_hit) = {
        let mut inner = shared.inner.lock().unwrap();
        let limits = inner.limits.clone();
        let pair_hit = match (limits.pair_interval, inner.last_to.get(&to)) {
            (Some(min), Some(last)) => now.duration_since(*last) < min,
            _ => false,
        };
        let mut rate_hit = false;
        if let Some(rate) = limits.rate_per_second {
            let rate = f64::from(rate);
            let (tokens, at) = inner.bucket.unwrap_or((rate, now));
            let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate);
            if tokens >= 1.0 && !pair_hit {
                inner.bucket = Some((tokens - 1.0, now));
            } else {
                inner.bucket = Some((tokens, now));
                rate_hit = tokens < 1.0;
            }
        }
        if !pair_hit && !rate_hit {
            inner.last_to.insert(to, now);
        }
        (rate_hit, pair_hit)
    };
    if rate_hit {
        return Some(meta_error(
            shared,
            400,
            130429,
            "(#130429) Rate limit hit: Cloud API message throughput has been reached",
            None,
        ));
    }
    if pair_hit {
        return Some(meta_error(
            shared,
            400,
            131056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            None,
        ));
    }
    None
}

fn record(shared: &Shared, req: &Value, phone: &str, arrived: Instant) -> (String, String) {
    let mut inner = shared.inner.lock().unwrap();
    inner.next_id += 1;
    let wamid = format!("wamid.MOCK{:012}", inner.next_id);
    let to = req["to"].as_str().unwrap_or_default().to_string();
    let mut message = req.clone();
    if let Some(m) = message.as_object_mut() {
        for f in ENVELOPE_FIELDS {
            m.remove(f);
        }
    }
    let callback = req["biz_opaque_callback_data"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    inner.accepted.push(Accepted {
        job: job_of(&callback),
        callback,
        to: to.clone(),
        message,
        wamid: wamid.clone(),
        at: Instant::now(),
        phone: phone.to_string(),
        arrived,
    });
    drop(inner);
    shared.recorded.send_modify(|n| *n += 1);
    (wamid, to)
}

/// The job id named by a callback id `outbound-runner:{job}:{seq}` (else the text itself).
pub fn job_of(callback: &str) -> String {
    callback
        .strip_prefix("outbound-runner:")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or(callback)
        .to_string()
}

fn ok(wamid: &str, to: &str) -> Response {
    axum::Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid}],
    }))
    .into_response()
}

fn meta_error(
    shared: &Shared,
    status: u16,
    code: i64,
    details: &str,
    subcode: Option<i64>,
) -> Response {
    *shared
        .inner
        .lock()
        .unwrap()
        .refused
        .entry(code)
        .or_insert(0) += 1;
    let mut error = json!({
        "message": format!("(#{code}) {details}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "AmockTRACE42",
    });
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "error": error })),
    )
        .into_response()
}
