//! The HTTP server on 127.0.0.1:0 in front of a runner, and a client for it.

use std::sync::Arc;
use std::time::Duration;

use outbound_runner::config::Settings;
use outbound_runner::delivery::JobHandler;
use outbound_runner::http::{self, HttpState, Listeners};
use outbound_runner::runner::Runner;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{TestDb, spawn_passive};

/// `JOB_RUNNER_TOKEN` of the apps tests spawn (unless their tweak unsets it).
pub const TOKEN: &str = "job-runner-token-for-tests";
/// `CRON_SECRET` of the apps tests spawn.
pub const CRON: &str = "cron-secret-for-tests";

/// A runner, its HTTP server and a database.
pub struct App {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub runner: Runner,
    pub state: HttpState,
    pub client: reqwest::Client,
    pub db: TestDb,
    server: http::Server,
}

/// A fresh database, a passive runner (no dispatcher: jobs run only through trigger passes, so
/// what a trigger answers is exactly what ran) with both secrets set, served on port 0.
pub async fn spawn_app(handler: Arc<dyn JobHandler>, tweak: impl FnOnce(&mut Settings)) -> App {
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, handler, |s| {
        s.http.job_runner_token = Some(SecretString::from(TOKEN));
        s.http.cron_secret = Some(SecretString::from(CRON));
        tweak(s);
    })
    .await;
    App::serve(db, runner).await
}

impl App {
    /// Serves `runner` (on `db`) on 127.0.0.1:0, `/metrics` included.
    pub async fn serve(db: TestDb, runner: Runner) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState::with_metrics_on_api(runner.clone(), true);
        let server = http::spawn(
            Listeners {
                api: Some(listener),
                metrics: None,
            },
            state.clone(),
            CancellationToken::new(),
        );
        App {
            base,
            runner,
            state,
            client: client(),
            db,
            server,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// GET and the answer as (status, JSON).
    pub async fn get_json(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        json(
            self.client
                .get(self.url(path_and_query))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Stops the server and drains the runner.
    pub async fn stop(self) {
        self.server.finish(Duration::from_secs(5)).await;
        self.runner.shutdown().await;
    }
}

/// A client with a bound on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The status and the JSON body of a response (panics if the body is not JSON).
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, value)
}
