//! A scripted API server for the operator's and the agent's tests (feature `testing`):
//! `kube::Client` over a tower-test mock, answering an exact, ordered list of expected requests
//! and asserting each method, URI and body.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests arrive at the returned handle.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One expected request and the answer to it.
pub struct Exchange {
    method: Method,
    uri: String,
    status: StatusCode,
    /// Checks the request body (JSON, or `Null` when empty) and returns the response body.
    respond: Box<dyn FnOnce(&Value) -> Value + Send>,
}

impl Exchange {
    /// The same exchange answered with another HTTP status.
    pub fn with_status(mut self, code: u16) -> Self {
        self.status = StatusCode::from_u16(code).expect("an HTTP status code");
        self
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.method, self.uri, self.status)
    }
}

/// Expects `method uri`, checks the body with `respond`, and answers 200 with what it returns.
pub fn expect(
    method: Method,
    uri: impl Into<String>,
    respond: impl FnOnce(&Value) -> Value + Send + 'static,
) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        status: StatusCode::OK,
        respond: Box::new(respond),
    }
}

/// Expects `method uri` and answers with an API error of HTTP status `code`.
pub fn fail(method: Method, uri: impl Into<String>, code: u16) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        status: StatusCode::from_u16(code).expect("an HTTP status code"),
        respond: Box::new(move |_| {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "injected", "reason": "Injected", "code": code})
        }),
    }
}

/// Asserts that no request is waiting at `handle`.
pub fn assert_idle(handle: &mut Handle) {
    use futures::FutureExt;
    if let Some(Some((request, _))) = handle.next_request().now_or_never() {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// Serves `script` in order, asserting each request's method and URI.
pub async fn serve(handle: &mut Handle, script: Vec<Exchange>) {
    for (i, step) in script.into_iter().enumerate() {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} ({} {}) never came", step.method, step.uri));
        assert_eq!(
            (request.method(), request.uri().to_string()),
            (&step.method, step.uri.clone()),
            "request {i}"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let answer = (step.respond)(&body);
        send.send_response(
            Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
}
