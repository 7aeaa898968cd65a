//! HTTP for a remote model: JSON requests to an OpenAI-compatible server, at most
//! [`HttpOptions::max_in_flight`] at once, each retried with exponential backoff on what may pass
//! (a refused or broken connection, no answer within the timeout, HTTP 408, 429 and 5xx, an answer
//! that is not the JSON expected), and all abandoned as soon as the run's stop flag is raised:
//! dropping a request closes its connection (natively) or aborts its fetch (in a browser), which
//! is how vLLM, SGLang and llama.cpp's server learn to stop generating.
//!
//! Natively the requests run on a Tokio runtime of their own (one thread) that the call blocks
//! on, like every other engine call; in a browser they are `fetch` calls the worker awaits.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use futures_util::stream;

use crate::error::{Error, RemoteError, Result};

/// How requests to a server are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpOptions {
    /// Requests in flight at once (≥ 1).
    pub max_in_flight: usize,
    /// Tries per request (≥ 1): the first and the retries.
    pub attempts: u32,
    /// How long one try may wait for the whole answer.
    pub timeout: Duration,
    /// The wait before the first retry; each later one doubles it (at most [`MAX_BACKOFF`]).
    pub backoff: Duration,
}

/// The longest wait between two tries, also the cap on a server's `Retry-After`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            attempts: 4,
            timeout: Duration::from_secs(120),
            backoff: Duration::from_millis(500),
        }
    }
}

/// One try's failure: worth another try or not.
enum Failure {
    Retry {
        why: String,
        /// The server's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
    Final(RemoteError),
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    /// The base URL, without a trailing slash (e.g. `http://127.0.0.1:8080/v1`).
    base: String,
    api_key: Option<String>,
    options: HttpOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .field("options", &self.options)
            .finish()
    }
}

/// The HTTP client and, natively, the runtime of one batch of requests. Natively both live only
/// as long as the batch: dropping the runtime drops the tasks that drive its connections, so a
/// request abandoned (on Stop, a timeout or another request's failure) has its connection
/// closed at once, which is how a server learns to stop generating.
struct Session {
    http: reqwest::Client,
    #[cfg(not(target_family = "wasm"))]
    runtime: tokio::runtime::Runtime,
}

impl Session {
    fn new(options: &HttpOptions) -> Result<Self> {
        #[cfg(not(target_family = "wasm"))]
        {
            let http = reqwest::Client::builder()
                .connect_timeout(options.timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| Error::Backend(format!("cannot start the HTTP client: {e}")))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Backend(format!("cannot start the HTTP runtime: {e}")))?;
            Ok(Self { http, runtime })
        }
        #[cfg(target_family = "wasm")]
        {
            let _ = options;
            Ok(Self {
                http: reqwest::Client::new(),
            })
        }
    }

    /// Runs `work` where its requests can run: natively on this session's runtime (the call
    /// blocks), in a browser on the worker's event loop.
    async fn run<F: Future>(&self, work: F) -> F::Output {
        #[cfg(not(target_family = "wasm"))]
        {
            self.runtime.block_on(work)
        }
        #[cfg(target_family = "wasm")]
        {
            work.await
        }
    }
}

impl Client {
    /// A client of the server at `base` (`http://host:port/v1`); `api_key` goes in an
    /// `Authorization: Bearer` header.
    pub fn new(base: &str, api_key: Option<String>, options: HttpOptions) -> Result<Self> {
        let bad = |reason: &str| {
            Error::Remote(RemoteError::BadUrl {
                url: base.to_string(),
                reason: reason.to_string(),
            })
        };
        let base = base.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "http" => {}
            "https" if cfg!(target_family = "wasm") => {}
            "https" => {
                return Err(bad(
                    "https is not built into the native client yet: reach the server over http \
                     (on its machine, or through an SSH tunnel: ssh -L 8000:localhost:8000 HOST)",
                ));
            }
            other => {
                return Err(bad(&format!(
                    "the scheme must be http or https, not {other}"
                )));
            }
        }
        if options.max_in_flight == 0 || options.attempts == 0 {
            return Err(Error::Sampling(
                "a remote model needs at least one request in flight and one try".into(),
            ));
        }
        Ok(Self {
            base,
            api_key,
            options,
        })
    }

    /// The base URL requests go under.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path` (under the base URL) and reads the answer with `parse`.
    pub async fn get<T>(
        &self,
        path: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
        stop: Option<&AtomicBool>,
    ) -> Result<T> {
        let mut out = self.send_all(path, &[None], &parse, stop).await?;
        out.pop()
            .ok_or(Error::Internal("one request gave no answer"))
    }

    /// POSTs each JSON body to `path` (under the base URL), at most `max_in_flight` at once, and
    /// reads each answer with `parse`; the answers come back in the bodies' order. The first
    /// request that fails for good fails the call (the rest are abandoned), as does the stop flag.
    pub async fn post_all<T>(
        &self,
        path: &str,
        bodies: &[serde_json::Value],
        parse: impl Fn(&str) -> std::result::Result<T, String>,
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<T>> {
        let bodies: Vec<Option<String>> = bodies.iter().map(|b| Some(b.to_string())).collect();
        self.send_all(path, &bodies, &parse, stop).await
    }

    async fn send_all<T>(
        &self,
        path: &str,
        bodies: &[Option<String>],
        parse: &dyn Fn(&str) -> std::result::Result<T, String>,
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<T>> {
        let session = Session::new(&self.options)?;
        let session = &session;
        let work = async {
            let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
            let all = async {
                let mut answers = stream::iter(bodies.iter().enumerate())
                    .map(|(i, body)| {
                        let url = &url;
                        async move {
                            (i, self.send_one(session, url, body.as_deref(), parse).await)
                        }
                    })
                    .buffer_unordered(self.options.max_in_flight);
                let mut out: Vec<Option<T>> = bodies.iter().map(|_| None).collect();
                while let Some((i, answer)) = answers.next().await {
                    out[i] = Some(answer?);
                }
                out.into_iter()
                    .map(|a| a.ok_or(Error::Internal("a request gave no answer")))
                    .collect::<Result<Vec<T>>>()
            };
            let all = std::pin::pin!(all);
            let stopped = std::pin::pin!(stop_raised(stop));
            match select(all, stopped).await {
                Either::Left((answers, _)) => answers,
                Either::Right(((), _)) => Err(Error::Stopped),
            }
        };
        session.run(work).await
    }

    /// One request (a GET without a body), tried until it succeeds, fails for good or runs out
    /// of tries.
    async fn send_one<T>(
        &self,
        session: &Session,
        url: &str,
        body: Option<&str>,
        parse: &dyn Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let mut wait = self.options.backoff;
        let mut tried = 0;
        loop {
            tried += 1;
            let why = match self.try_once(session, url, body, parse).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Final(e)) => return Err(Error::Remote(e)),
                Err(Failure::Retry { why, after }) => (why, after),
            };
            if tried >= self.options.attempts {
                return Err(Error::Remote(RemoteError::GaveUp {
                    url: url.to_string(),
                    attempts: tried,
                    last: why.0,
                }));
            }
            sleep(why.1.unwrap_or(wait).min(MAX_BACKOFF)).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_once<T>(
        &self,
        session: &Session,
        url: &str,
        body: Option<&str>,
        parse: &dyn Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<T, Failure> {
        let mut request = match body {
            Some(body) => session
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => session.http.get(url),
        };
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let exchange = async {
            let response = request.send().await.map_err(describe)?;
            let status = response.status().as_u16();
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_BACKOFF.as_secs_f64())));
            let text = response.text().await.map_err(describe)?;
            Ok::<_, String>((status, after, text))
        };
        let exchange = std::pin::pin!(exchange);
        let timer = std::pin::pin!(sleep(self.options.timeout));
        let (status, after, text) = match select(exchange, timer).await {
            Either::Left((Ok(answer), _)) => answer,
            Either::Left((Err(why), _)) => return Err(Failure::Retry { why, after: None }),
            Either::Right(((), _)) => {
                return Err(Failure::Retry {
                    why: format!("no answer within {} s", self.options.timeout.as_secs_f64()),
                    after: None,
                });
            }
        };
        match status {
            200..=299 => parse(&text).map_err(|why| Failure::Retry {
                why: format!(
                    "the answer is not the JSON expected ({why}): {}",
                    excerpt(&text)
                ),
                after: None,
            }),
            408 | 429 | 500..=599 => Err(Failure::Retry {
                why: format!("HTTP {status}: {}", server_message(&text)),
                after,
            }),
            _ => Err(Failure::Final(RemoteError::Refused {
                url: url.to_string(),
                status,
                message: server_message(&text),
            })),
        }
    }
}

/// A transport error in words, with its causes (reqwest's own message names only the URL).
fn describe(error: reqwest::Error) -> String {
    #[cfg(not(target_family = "wasm"))]
    let connect = error.is_connect();
    #[cfg(target_family = "wasm")]
    let connect = false;
    let mut out = if connect {
        "cannot connect".to_string()
    } else if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    // A browser tells a server that refuses the page's origin from one that is down no more
    // than this.
    #[cfg(target_family = "wasm")]
    out.push_str(" (the server is down, unreachable, or does not allow this page's origin: CORS)");
    out
}

/// What a server said went wrong: OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`,
/// or the start of the body.
fn server_message(body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = json.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("message"))
    });
    match found {
        Some(serde_json::Value::String(s)) => excerpt(s),
        Some(other) => excerpt(&other.to_string()),
        None if body.trim().is_empty() => "(an empty body)".into(),
        None => excerpt(body),
    }
}

/// At most 300 characters of `text`, on one line.
fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// Completes once `stop` is raised (never without one), looking every 20 ms.
async fn stop_raised(stop: Option<&AtomicBool>) {
    match stop {
        Some(flag) => {
            while !flag.load(Ordering::Relaxed) {
                sleep(Duration::from_millis(20)).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Waits for `duration` on the runtime the requests run on.
async fn sleep(duration: Duration) {
    #[cfg(not(target_family = "wasm"))]
    tokio::time::sleep(duration).await;
    #[cfg(target_family = "wasm")]
    gloo_timers::future::sleep(duration).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_read_from_the_usual_shapes() {
        let openai =
            r#"{"error": {"message": "n > 1 is not supported", "type": "invalid_request_error"}}"#;
        assert_eq!(server_message(openai), "n > 1 is not supported");
        assert_eq!(server_message(r#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(
            server_message("<html>\n  Bad Gateway\n</html>"),
            "<html> Bad Gateway </html>"
        );
        assert_eq!(server_message(""), "(an empty body)");
        let long = "x".repeat(1000);
        assert_eq!(server_message(&long).chars().count(), 301);
    }

    #[test]
    fn only_http_addresses_and_sane_options_are_taken() {
        let ok = Client::new("http://127.0.0.1:8080/v1/", None, HttpOptions::default());
        assert_eq!(
            ok.map(|c| c.base().to_string()).ok().as_deref(),
            Some("http://127.0.0.1:8080/v1")
        );
        for bad in ["127.0.0.1:8080", "ftp://host/v1", "not a url"] {
            let e = Client::new(bad, None, HttpOptions::default()).map(|_| ());
            assert!(
                matches!(e, Err(Error::Remote(RemoteError::BadUrl { .. }))),
                "{bad}: {e:?}"
            );
        }
        let none_in_flight = HttpOptions {
            max_in_flight: 0,
            ..HttpOptions::default()
        };
        assert!(Client::new("http://127.0.0.1:1/v1", None, none_in_flight).is_err());
    }
}
