//! The admin HTTP server. Reads are `GET`: `/status`, `/metrics`,
//! `/trace?jid=J`, `/record?op=get`, `/records?prefix=P`. Whatever changes state is `POST`
//! only (`/record?op=put|delete`, `/send`, `/load`), so a link or an image
//! tag in a browser cannot trigger it. It binds to loopback by default
//! (see [`crate::config`]); beyond loopback (or with `admin_token`) every
//! request needs `Authorization: Bearer <token>`, the token being kept in
//! `admin.token` in the data directory. It only ever talks to the core
//! task through its inbox.

use crate::api::{LoadReport, RecordList, RecordReport, StatusReport, TraceReport};
use crate::control::{Command, LoadSpec};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
struct AppState {
    inbox: mpsc::Sender<Command>,
    metrics: PrometheusHandle,
    /// The bearer token every request must carry, when one is required.
    token: Option<Arc<String>>,
}

/// Refuses requests without the bearer token (when one is required).
async fn authorise(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(want) = &s.token {
        let got = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = got.is_some_and(|g| {
            g.len() == want.len()
                && g.bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
        }
    }
    next.run(req).await
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn ask<T>(
    inbox: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    inbox
        .send(make(tx))
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down"))?;
    rx.await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down"))
}

async fn status(State(s): State<AppState>) -> Response {
    match ask::<StatusReport>(&s.inbox, Command::Status).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e,
    }
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TraceQuery {
    jid: Option<String>,
}

async fn trace(State(s): State<AppState>, Query(q): Query<TraceQuery>) -> Response {
    let Some(jid) = q.jid.filter(|j| !j.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing jid parameter");
    };
    if jid.len() > 3071 {
        return error(StatusCode::BAD_REQUEST, "jid longer than 3071 bytes");
    }
    if let Err(e) = dht::keys::jid_key(&jid) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match ask::<TraceReport>(&s.inbox, |reply| Command::Trace { jid, reply }).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e,
    }
}

/// `POST /load?count=N&...`: a load run (tests and benchmarks).
async fn load(State(s): State<AppState>, Query(spec): Query<LoadSpec>) -> Response {
    if let Err(e) = spec.validate() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match ask::<Result<LoadReport, String>>(&s.inbox, |reply| Command::Load { spec, reply }).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(e) => e,
    }
}

#[derive(Deserialize)]
struct SendQuery {
    from: String,
    to: String,
    body: String,
    #[serde(default = "chat")]
    r#type: String,
    id: Option<String>,
}

fn chat() -> String {
    "chat".into()
}

/// `POST /send?from=F&to=T&body=B[&type=chat][&id=I]`: sends a message from
/// a ring JID (operators' smoke tests; the tests' way to originate traffic).
async fn send(State(s): State<AppState>, Query(q): Query<SendQuery>) -> Response {
    let (Ok(from), Ok(to)) = (jid::Jid::new(&q.from), jid::Jid::new(&q.to)) else {
        return error(StatusCode::BAD_REQUEST, "from and to must be JIDs");
    };
    if !matches!(
        q.r#type.as_str(),
        "chat" | "normal" | "headline" | "groupchat"
    ) {
        return error(
            StatusCode::BAD_REQUEST,
            "type must be chat, normal, headline or groupchat",
        );
    }
    if q.body.len() > 64 * 1024 {
        return error(StatusCode::BAD_REQUEST, "body longer than 64 KiB");
    }
    let mut m = xmpp_parsers::minidom::Element::bare("message", crate::xmpp::stanza::NS_CLIENT);
    crate::xmpp::stanza::set(&mut m, "from", from.as_str());
    crate::xmpp::stanza::set(&mut m, "to", to.as_str());
    crate::xmpp::stanza::set(&mut m, "type", &q.r#type);
    if let Some(id) = &q.id {
        crate::xmpp::stanza::set(&mut m, "id", id);
    }
    let mut body = xmpp_parsers::minidom::Element::bare("body", crate::xmpp::stanza::NS_CLIENT);
    body.append_text(q.body);
    m.append_child(body);
    match ask::<Result<(), String>>(&s.inbox, |reply| Command::Send { stanza: m, reply }).await {
        Ok(Ok(())) => Json(serde_json::json!({ "ok": true })).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => e,
    }
}

#[derive(Deserialize)]
struct RecordQuery {
    op: String,
    name: String,
    value: Option<String>,
    /// `get` only: this node's own copy, without asking the ring.
    #[serde(default)]
    local: bool,
}

/// `GET /record?op=get&name=N[&local=true]`: reads a record (`local`:
/// this node's own copy, without asking the ring).
async fn record_get(State(s): State<AppState>, Query(q): Query<RecordQuery>) -> Response {
    use crate::records::RecordOp;
    if q.op != "get" || q.value.is_some() {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /record only reads (op=get); put and delete are POST",
        );
    }
    let op = RecordOp::Get { name: q.name };
    let local = q.local;
    match ask::<RecordReport>(&s.inbox, |reply| Command::Record { op, local, reply }).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e,
    }
}

/// Most names in one page of `GET /records`.
pub const MAX_LIST: usize = 1000;

#[derive(Deserialize)]
struct ListQuery {
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /records?prefix=P[&after=A][&limit=N]`: one page of the live
/// records this node holds (as one of their replicas) whose names start
/// with `P`, in name order; `next` is the `after` of the next page.
async fn records_list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    if q.prefix.is_empty() {
        return error(StatusCode::BAD_REQUEST, "prefix must not be empty");
    }
    let limit = q.limit.unwrap_or(MAX_LIST);
    if limit == 0 || limit > MAX_LIST {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1..={MAX_LIST}"),
        );
    }
    let (prefix, after) = (q.prefix, q.after);
    match ask::<RecordList>(&s.inbox, |reply| Command::ListRecords {
        prefix,
        after,
        limit,
        reply,
    })
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => e,
    }
}

/// `POST /record?op=put&name=N` with the value as the body (values of any
/// size up to the record limit, and any bytes), `POST
/// /record?op=create&name=N` (the same, only if no live record has the
/// name: the answer has `replicas` when it was written, the existing
/// `value` when not), or `POST /record?op=delete&name=N`.
async fn record_post(
    State(s): State<AppState>,
    Query(q): Query<RecordQuery>,
    body: axum::body::Bytes,
) -> Response {
    use crate::records::RecordOp;
    if q.value.is_some() {
        return error(StatusCode::BAD_REQUEST, "the value goes in the body");
    }
    if q.local {
        return error(StatusCode::BAD_REQUEST, "local=true is for get only");
    }
    let op = match q.op.as_str() {
        "put" => RecordOp::Put {
            name: q.name,
            value: body.to_vec(),
        },
        "create" => RecordOp::Create {
            name: q.name,
            value: body.to_vec(),
        },
        "delete" if body.is_empty() => RecordOp::Delete { name: q.name },
        "delete" => return error(StatusCode::BAD_REQUEST, "delete takes no body"),
        "get" => return error(StatusCode::BAD_REQUEST, "get is a GET"),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "op must be put, create, get or delete",
            );
        }
    };
    match ask::<RecordReport>(&s.inbox, |reply| Command::Record {
        op,
        local: false,
        reply,
    })
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => e,
    }
}

/// Serves until `shutdown` resolves; `token`: the bearer token every
/// request must carry, if any.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    inbox: mpsc::Sender<Command>,
    metrics: PrometheusHandle,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = AppState {
        inbox,
        metrics,
        token: token.map(Arc::new),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(render_metrics))
        .route("/trace", get(trace))
        .route("/load", post(load))
        .route("/send", post(send))
        .route("/record", get(record_get).post(record_post))
        .route("/records", get(records_list))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorise,
        ))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("admin server failed: {e}");
    }
}
