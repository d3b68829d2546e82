//! A mock orchestrator: `POST /compose` answers from a script (then a default reply), and records
//! every request and its `Authorization` header.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "mock-orchestrator-token-77";

#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON.
    Json(Value),
    /// This status, content type and body, as given.
    Raw(u16, &'static str, &'static str),
    /// Answers `Json` after a delay.
    Slow(Duration, Value),
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Answer>,
    default: Option<Value>,
    requests: Vec<(Option<String>, Value)>,
}

pub struct MockOrchestrator {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Drop for MockOrchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply of two text messages.
pub fn two_texts() -> Value {
    json!({"messages": [
        {"type": "text", "text": {"body": "Thanks for your message!"}},
        {"type": "text", "text": {"body": "An agent will follow up."}},
    ]})
}

impl MockOrchestrator {
    /// Answers `default` to every request the script does not cover.
    pub async fn start(default: Value) -> MockOrchestrator {
        let inner = Arc::new(Mutex::new(Inner {
            default: Some(default),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/compose", post(compose))
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockOrchestrator { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/compose", self.addr)
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    /// Every request: its Authorization header and JSON body.
    pub fn requests(&self) -> Vec<(Option<String>, Value)> {
        self.inner.lock().unwrap().requests.clone()
    }
}

async fn compose(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let answer = {
        let mut inner = inner.lock().unwrap();
        inner
            .requests
            .push((auth, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        inner
            .script
            .pop_front()
            .unwrap_or_else(|| Answer::Json(inner.default.clone().unwrap_or(Value::Null)))
    };
    match answer {
        Answer::Json(v) => axum::Json(v).into_response(),
        Answer::Raw(status, content_type, body) => (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        Answer::Slow(delay, v) => {
            tokio::time::sleep(delay).await;
            axum::Json(v).into_response()
        }
    }
}
