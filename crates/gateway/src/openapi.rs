//! The gateway's OpenAPI 3.1 document, generated from the code: every handler carries a
//! `#[utoipa::path]` (its success and its own errors; each feature module lists its handlers in a
//! `Doc`), the wire types derive `ToSchema`, and [`document`] completes what the route table and
//! the standard stack decide for every route alike:
//!
//! - security and `401` from the route's token rule (Bearer, `X-Token`, or the bare token in
//!   `Authorization`: what `tokens::token_from` accepts), `403` from its role and guest rule, `429`
//!   from its rate limit, all as this gateway's configuration resolves them;
//! - `400`/`413`/`415` for routes with a body, `500` and `504` (the stack's) for every route;
//! - the aliases (`/auth/login`, `/getUserData`, ...), which answer exactly as their originals;
//! - the task submission's schema, one variant per task type of `queue::types::TYPES`, and the
//!   queue's answers (`Task`, its page, its counts);
//! - the links that let a client chain calls (register, then read the profile; submit a task, then
//!   read it).
//!
//! `tests::contract` proves the document and the route table agree: every route the gateway has is
//! in the document with the same methods, and nothing else is.

use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::config::Config;
use crate::policy::{Policies, RoleScope, TokenRule};

/// Routes that answer exactly as another: (alias, method, original, the alias's operation id).
const ALIASES: &[(&str, &str, &str, &str)] = &[
    ("/auth/login", "post", "/login", "auth_login"),
    ("/auth/register", "post", "/register", "auth_register"),
    ("/getUserData", "get", "/users/me", "get_user_data"),
    ("/task/{id}", "get", "/tasks/{id}", "get_task_alias"),
];

/// The document's security schemes, by name: every way `tokens::token_from` reads a token.
const SCHEMES: [&str; 3] = ["bearer", "x_token", "bare_token"];

/// The methods an OpenAPI path item may hold, as its keys.
pub(crate) const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document of a gateway configured by `config`: exactly the routes it has.
pub fn document(config: &Config) -> Value {
    let mut api = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("scalelab gateway")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .build(),
        )
        .build();
    for part in crate::features::docs(config) {
        api.merge(part);
    }
    // Plain data (strings, maps, numbers) always serialises.
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    add_queue_schemas(&mut doc, config);
    add_profile_rules(&mut doc, config);
    add_rental_rules(&mut doc, config);
    add_aliases(&mut doc);
    let policies = Policies::resolve(config);
    for_each_operation(&mut doc, |path, method, op| {
        apply_route_table(&policies, config, path, method, op);
        add_common_errors(op);
    });
    add_links(&mut doc);
    add_security_schemes(&mut doc);
    doc
}

const DESCRIPTION: &str = "scalelab's public API: what the load balancer on :8000 passes to the \
gateways. Every error is `{\"error\": \"<code>\", \"message\": \"...\"}` with the status listed \
under each route; `error` is a stable code to branch on, `message` is for people.\n\n\
A token comes from `POST /login` (or a guest token from `GET /token`) and is sent as \
`Authorization: Bearer <token>`, `X-Token: <token>` or a bare `Authorization: <token>`. Every \
answer carries `X-Served-By` (the gateway) and `X-Request-Id`.";

/// `f(path, method, operation)` for every operation of `doc`.
fn for_each_operation(doc: &mut Value, mut f: impl FnMut(&str, &str, &mut Map<String, Value>)) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if let (true, Some(op)) = (METHODS.contains(&method.as_str()), op.as_object_mut()) {
                f(path, method, op);
            }
        }
    }
}

/// Copies each original's operation to its alias, with an operation id of its own.
fn add_aliases(doc: &mut Value) {
    for (alias, method, original, id) in ALIASES {
        let Some(mut op) = doc
            .pointer(&format!("/paths/{}/{method}", escape(original)))
            .cloned()
        else {
            continue;
        };
        op["operationId"] = json!(id);
        op["description"] = json!(format!(
            "The same as `{} {original}`.",
            method.to_uppercase()
        ));
        if let Some(paths) = doc["paths"].as_object_mut() {
            let item = paths.entry(alias.to_string()).or_insert_with(|| json!({}));
            item[*method] = op;
        }
    }
}

/// A JSON pointer segment for `s` (RFC 6901).
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// An error answer in the one shape, with an example.
fn error(description: &str, code: &str, message: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"},
            "example": {"error": code, "message": message},
        }},
    })
}

/// Adds the response `status` unless the handler's annotation already has it.
fn add_response(op: &mut Map<String, Value>, status: &str, response: Value) {
    let responses = op.entry("responses").or_insert_with(|| json!({}));
    if let Some(r) = responses.as_object_mut() {
        r.entry(status.to_string()).or_insert(response);
    }
}

/// Security, `401`, `403` and `429` of one operation, from its resolved entry of the route table.
fn apply_route_table(
    policies: &Policies,
    config: &Config,
    path: &str,
    method: &str,
    op: &mut Map<String, Value>,
) {
    let key = format!("{} {path}", method.to_uppercase());
    let Ok(resolved) = policies.get(&key) else {
        // Not a route of the table: the contract test reports it.
        return;
    };
    let p = resolved.policy;
    let schemes: Vec<Value> = SCHEMES.iter().map(|s| json!({ *s: [] })).collect();
    let strict = p.token == TokenRule::Required && config.auth.required;
    match p.token {
        TokenRule::None => {
            op.insert("security".into(), json!([]));
        }
        TokenRule::Optional => {
            let mut any = vec![json!({})];
            any.extend(schemes);
            op.insert("security".into(), Value::Array(any));
        }
        TokenRule::Required if !config.auth.required => {
            // Tokens are optional on such a gateway: without one the caller runs as anonymous.
            let mut any = vec![json!({})];
            any.extend(schemes);
            op.insert("security".into(), Value::Array(any));
        }
        TokenRule::Required => {
            op.insert("security".into(), Value::Array(schemes));
        }
    }
    if strict {
        let mut r = error(
            "No token (`missing_token`), or one that is malformed, badly signed or of an unknown \
             key (`invalid_token`), or expired (`token_expired`).",
            "missing_token",
            "this route needs a token: send `Authorization: Bearer <token>`",
        );
        r["headers"] = json!({"WWW-Authenticate": {
            "description": "`Bearer`, with `error=\"invalid_token\"` when a token was sent (RFC 6750).",
            "schema": {"type": "string"},
        }});
        add_response(op, "401", r);
    }
    let guests_refused = strict && !p.guests;
    if resolved.role.is_some() || guests_refused {
        let mut why = Vec::new();
        if let Some(role) = &resolved.role {
            why.push(match p.scope {
                RoleScope::Always => format!("the caller lacks the `{role}` role"),
                RoleScope::UnlessSelf(param) => {
                    format!("the caller lacks the `{role}` role and is not `{{{param}}}`")
                }
            });
        }
        if guests_refused {
            why.push("a guest token on a route that writes".into());
        }
        add_response(
            op,
            "403",
            error(
                &format!("Refused (`forbidden`): {}.", why.join("; or ")),
                "forbidden",
                &format!("{} {} needs the admin role", p.method, p.path),
            ),
        );
    }
    if let Some((bucket, rule)) = &resolved.limit {
        let mut r = error(
            &format!(
                "Over the `{bucket}` rate limit ({}/min, burst {}) for this client \
                 (`rate_limited`); `Retry-After` says when to try again.",
                rule.per_minute,
                rule.burst()
            ),
            "rate_limited",
            "too many requests on /login; retry in 12 s",
        );
        r["headers"] = json!({"Retry-After": {
            "description": "Seconds until a request would be admitted.",
            "schema": {"type": "integer", "minimum": 0},
        }});
        add_response(op, "429", r);
    }
}

/// Adds the response `status`, or, when the annotation or the route table already gave it, adds
/// `also` to its description.
fn add_or_extend(op: &mut Map<String, Value>, status: &str, response: Value, also: &str) {
    let responses = op.entry("responses").or_insert_with(|| json!({}));
    let Some(r) = responses.as_object_mut() else {
        return;
    };
    match r.get_mut(status) {
        Some(existing) => {
            let d = existing["description"].as_str().unwrap_or_default();
            existing["description"] = json!(format!("{d} {also}").trim().to_string());
        }
        None => {
            r.insert(status.to_string(), response);
        }
    }
}

/// What any route may answer, whatever it does: body errors for routes with a body, the standard
/// stack's `500` and `504`, and the balancer's answers (every route is reached through it).
fn add_common_errors(op: &mut Map<String, Value>) {
    if let Some(body) = op.get("requestBody") {
        let json_extractor = body.get("required").and_then(Value::as_bool) == Some(true);
        add_response(
            op,
            "400",
            error(
                "The body is not JSON (`malformed_json`) or lacks a field or has a wrong type \
                 (`invalid_body`).",
                "invalid_body",
                "the body does not have the expected fields and types: missing field `username`",
            ),
        );
        add_response(
            op,
            "413",
            error(
                "The body is larger than this gateway accepts (`payload_too_large`).",
                "payload_too_large",
                "the body is larger than this endpoint accepts",
            ),
        );
        if json_extractor {
            add_response(
                op,
                "415",
                error(
                    "The body is not sent as `application/json` (`unsupported_media_type`).",
                    "unsupported_media_type",
                    "send the body as JSON with `Content-Type: application/json`",
                ),
            );
        }
    }
    add_response(
        op,
        "500",
        error(
            "A fault of the gateway (`internal`); the detail is in its log, never here.",
            "internal",
            "the server failed to handle the request; see its log",
        ),
    );
    add_response(
        op,
        "504",
        error(
            "The request took longer than the gateway allows (`timeout`), or an upstream did \
             not answer in time (`<service>_timeout`, `backend_timeout`).",
            "timeout",
            "the request took longer than this service allows",
        ),
    );
    // The balancer on :8000 answers for the gateways it cannot reach, and for clients over its
    // own limits (`[lb.rate_limit]`, `[lb] deny`/`allow`), whatever the route.
    let lb_limit = "Or over the balancer's per-address limit (`rate_limited`, with `Retry-After`), when the topology sets one.";
    add_or_extend(
        op,
        "429",
        error(
            "Over the balancer's per-address rate limit (`rate_limited`, with `Retry-After`), when \
             the topology sets one (`[lb.rate_limit]`).",
            "rate_limited",
            "more than 50 requests per second from your address; retry in 1 s",
        ),
        lb_limit,
    );
    add_or_extend(
        op,
        "403",
        error(
            "The balancer refuses the client's network (`forbidden`: `[lb] deny`/`allow`).",
            "forbidden",
            "your network is not allowed to use this service",
        ),
        "Or the balancer refuses the client's network (`[lb] deny`/`allow`).",
    );
    add_or_extend(
        op,
        "502",
        error(
            "The balancer could not reach a gateway (`backend_unreachable`).",
            "backend_unreachable",
            "no gateway could be reached; try again shortly",
        ),
        "Or the balancer could not reach a gateway (`backend_unreachable`).",
    );
    add_or_extend(
        op,
        "503",
        error(
            "No gateway is healthy behind the balancer (`no_healthy_backend`).",
            "no_healthy_backend",
            "no healthy backend; try again shortly",
        ),
        "Or no gateway is healthy behind the balancer (`no_healthy_backend`).",
    );
    // An error answer the annotation gave without an example gets one from its status.
    if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
        for (status, r) in responses.iter_mut() {
            let Some(content) = r.pointer_mut("/content/application~1json") else {
                continue;
            };
            let is_error = content
                .pointer("/schema/$ref")
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with("/ErrorBody"));
            if is_error && content.get("example").is_none() {
                let (code, message) = example_error(status);
                content["example"] = json!({"error": code, "message": message});
            }
        }
    }
}

/// A typical error of `status`, for examples.
fn example_error(status: &str) -> (&'static str, &'static str) {
    match status {
        "400" => ("invalid_query", "limit is 1 to 500"),
        "403" => (
            "forbidden",
            "this route needs a user's token (log in first)",
        ),
        "404" => ("not_found", "no record for key \"missing\""),
        "409" => (
            "conflict",
            "the task is running; only a queued task can be cancelled",
        ),
        "502" => (
            "db_unavailable",
            "the db service cannot be reached; try again shortly",
        ),
        "503" => (
            "queue_unavailable",
            "this gateway has no task queue configured",
        ),
        _ => ("internal", "the server failed to handle the request"),
    }
}

/// The links a client may follow from a creation to the created thing: (path, method, status,
/// link name, target operation id, parameter, where its value is in the answer).
const LINKS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    (
        "/register",
        "post",
        "201",
        "GetUser",
        "get_user",
        "id",
        "$response.body#/id",
    ),
    (
        "/register",
        "post",
        "201",
        "SetUserRole",
        "set_user_role",
        "id",
        "$response.body#/id",
    ),
    (
        "/tasks",
        "post",
        "202",
        "GetTask",
        "get_task",
        "id",
        "$response.body#/id",
    ),
    (
        "/tasks",
        "post",
        "202",
        "GetTaskResult",
        "get_result",
        "id",
        "$response.body#/id",
    ),
    (
        "/tasks",
        "post",
        "202",
        "CancelTask",
        "cancel_task",
        "id",
        "$response.body#/id",
    ),
    (
        "/tasks",
        "post",
        "202",
        "RequeueTask",
        "requeue_task",
        "id",
        "$response.body#/id",
    ),
    (
        "/longtask",
        "post",
        "202",
        "GetTask",
        "get_task",
        "id",
        "$response.body#/task_id",
    ),
    (
        "/add",
        "post",
        "201",
        "GetResult",
        "get_result",
        "id",
        "$response.body#/result_id",
    ),
    (
        "/add",
        "post",
        "201",
        "GetTask",
        "get_task",
        "id",
        "$response.body#/task_id",
    ),
    (
        "/data/{key}",
        "put",
        "200",
        "GetData",
        "get_data_key",
        "key",
        "$response.body#/key",
    ),
    (
        "/units",
        "post",
        "201",
        "GetUnit",
        "get_unit",
        "id",
        "$response.body#/id",
    ),
    (
        "/units",
        "post",
        "201",
        "UpdateUnit",
        "update_unit",
        "id",
        "$response.body#/id",
    ),
    (
        "/finances/generate_report",
        "post",
        "202",
        "GetTask",
        "get_task",
        "id",
        "$response.body#/task_id",
    ),
    (
        "/legal/generate_report",
        "post",
        "202",
        "GetTask",
        "get_task",
        "id",
        "$response.body#/task_id",
    ),
];

/// Declares [`LINKS`] whose both ends this document has.
fn add_links(doc: &mut Value) {
    let mut ids = std::collections::HashSet::new();
    for_each_operation(doc, |_, _, op| {
        if let Some(id) = op.get("operationId").and_then(Value::as_str) {
            ids.insert(id.to_string());
        }
    });
    for (path, method, status, name, target, param, value) in LINKS {
        if !ids.contains(*target) {
            continue;
        }
        let pointer = format!("/paths/{}/{method}/responses/{status}", escape(path));
        if let Some(response) = doc.pointer_mut(&pointer) {
            response["links"][*name] = json!({
                "operationId": target,
                "parameters": { *param: value },
            });
        }
    }
}

fn add_security_schemes(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <token>`, the token of `POST /login` (EdDSA, \
                            verified against auth's published keys).",
        },
        "x_token": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Token",
            "description": "`X-Token: <token>`, read when there is no `Authorization` header.",
        },
        "bare_token": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Authorization: <token>`: the token without a scheme (the lab's \
                            clients send it so).",
        },
    });
}

/// One task, as the queue stores and answers it (`queue::Task`). Times are milliseconds since
/// the Unix epoch.
#[derive(ToSchema)]
#[schema(as = Task)]
#[allow(dead_code)]
pub(crate) struct TaskSchema {
    /// Unique, time-ordered (UUID v7).
    id: String,
    /// The task type (`GET /tasks/types`).
    #[schema(rename = "type")]
    kind: String,
    /// The handler's input.
    payload: serde_json::Value,
    /// Where it is in its life (one of `queue::Status::ALL`).
    status: String,
    /// Its priority (one of `queue::Priority::ALL`).
    priority: String,
    /// Attempts started so far.
    attempts: u32,
    /// Attempts it gets before it is `dead`.
    max_attempts: u32,
    /// The handler's answer once `succeeded`.
    result: Option<serde_json::Value>,
    /// The last error.
    error: Option<String>,
    /// The last progress report of the worker running it.
    progress: Option<serde_json::Value>,
    /// Who submitted it (a user id).
    owner: String,
    /// The submitter's idempotency key, if any.
    idempotency_key: Option<String>,
    /// When it was submitted.
    created_at: i64,
    /// When its latest attempt started.
    started_at: Option<i64>,
    /// When it reached a final status.
    finished_at: Option<i64>,
    /// The worker (slot) holding or last holding it.
    worker_id: Option<String>,
    /// Not claimable before this time (the backoff of a failed attempt).
    not_before: i64,
    /// Until when the holder's lease runs, while `running`.
    lease_until: Option<i64>,
}

/// One page of tasks, newest first (`queue::Page`).
#[derive(ToSchema)]
#[schema(as = TaskPage)]
#[allow(dead_code)]
pub(crate) struct TaskPageSchema {
    /// The tasks.
    tasks: Vec<TaskSchema>,
    /// Pass it as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// The queue's counts (`queue::Stats`) and the gateway that answered.
#[derive(ToSchema)]
#[schema(as = TaskStats)]
#[allow(dead_code)]
pub(crate) struct TaskStatsSchema {
    /// Tasks by status (every status present, zero included).
    by_status: std::collections::BTreeMap<String, u64>,
    /// Tasks waiting to run by priority.
    depth_by_priority: std::collections::BTreeMap<String, u64>,
    /// The engine's name.
    backend: String,
    /// How long the oldest `queued` task has waited, in milliseconds; `null` when none waits.
    oldest_queued_ms: Option<u64>,
    /// The gateway that answered.
    gateway_id: String,
}

/// What the profile bodies accept beyond their derive: the roles of this topology, and a change
/// that changes something (`api::wire::users::UpdateProfile::validate`: a field given as `null`
/// counts as absent).
fn add_profile_rules(doc: &mut Value, config: &Config) {
    let schemas = &mut doc["components"]["schemas"];
    let roles: Vec<Value> = config.roles.iter().map(|r| json!(r)).collect();
    let mut with_user = roles.clone();
    if !config.roles.iter().any(|r| r == "user") {
        with_user.push(json!("user"));
    }
    let mut nullable = with_user;
    nullable.push(Value::Null);
    schemas["RegisterUser"]["properties"]["role"] = json!({
        "type": ["string", "null"],
        "enum": nullable,
        "description": "`user` (the default); any other role needs the role of `PATCH /users/{id}/role`.",
    });
    schemas["RoleChange"]["properties"]["role"] = json!({"type": "string", "enum": roles.clone()});
    let mut role_or_null = roles;
    role_or_null.push(Value::Null);
    schemas["UpdateProfile"]["properties"]["role"] = json!({
        "type": ["string", "null"],
        "enum": role_or_null,
        "description": "New role; needs the role of `PATCH /users/{id}/role`.",
    });
    let changes: Vec<Value> = ["email", "first_name", "last_name", "role"]
        .iter()
        .map(|f| json!({"required": [f], "properties": {*f: {"type": "string"}}}))
        .collect();
    schemas["UpdateProfile"]["anyOf"] = Value::Array(changes);
}

/// Not blank: at least one character that is not white space (what `str::trim` removes).
const NOT_BLANK: &str = r"^[\s\S]*[^\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][\s\S]*$";

/// What the Casitas preset's bodies accept beyond their derive, as the rental services check
/// them (`rental::validation`), and the report routes' filters as the report tasks check them.
fn add_rental_rules(doc: &mut Value, config: &Config) {
    use api::wire::rental::{TRANSACTION_KINDS, UNIT_STATUSES};
    let text = |max: usize| json!({"type": "string", "pattern": NOT_BLANK, "maxLength": max});
    let unit_fields = [
        ("name", text(100)),
        ("address", text(200)),
        (
            "bedrooms",
            json!({"type": "integer", "minimum": 0, "maximum": 20}),
        ),
        (
            "monthly_rent_cents",
            json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        ),
        ("status", json!({"type": "string", "enum": UNIT_STATUSES})),
    ];
    let schemas = &mut doc["components"]["schemas"];
    if schemas.get("NewUnit").is_some() {
        for (field, schema) in &unit_fields {
            let mut s = schema.clone();
            if *field == "status" {
                s["type"] = json!(["string", "null"]);
                s["enum"] = json!([UNIT_STATUSES[0], UNIT_STATUSES[1], UNIT_STATUSES[2], null]);
            }
            schemas["NewUnit"]["properties"][*field] = s;
        }
    }
    if schemas.get("UnitChange").is_some() {
        let mut changes = Vec::new();
        for (field, schema) in &unit_fields {
            let mut nullable = schema.clone();
            nullable["type"] = json!([schema["type"], "null"]);
            if let Some(values) = schema["enum"].as_array() {
                let mut values = values.clone();
                values.push(Value::Null);
                nullable["enum"] = Value::Array(values);
            }
            schemas["UnitChange"]["properties"][*field] = nullable;
            // A change that names no field (or only `null`s) changes nothing: refused.
            changes.push(json!({"required": [field], "properties": {*field: schema}}));
        }
        schemas["UnitChange"]["anyOf"] = Value::Array(changes);
    }
    if schemas.get("NewTransaction").is_some() {
        let t = &mut schemas["NewTransaction"];
        t["properties"]["unit_id"] = json!({"type": "integer", "minimum": 1, "maximum": i64::MAX});
        t["properties"]["month"] = json!({"type": "string", "pattern": MONTH_PATTERN});
        t["properties"]["kind"] = json!({"type": "string", "enum": TRANSACTION_KINDS});
        t["properties"]["description"] = json!({"type": "string", "maxLength": 200});
        // Income is positive, expenses negative (`rental::validation::is_income`).
        t["oneOf"] = json!([
            {"properties": {"kind": {"enum": ["rent", "deposit"]},
                "amount_cents": {"type": "integer", "minimum": 1, "maximum": i64::MAX}}},
            {"properties": {"kind": {"enum": ["maintenance", "utilities", "tax"]},
                "amount_cents": {"type": "integer", "minimum": i64::MIN, "maximum": -1}}},
        ]);
    }
    // A report's body is its task's payload, or nothing.
    for (path, kind) in [
        ("/finances/generate_report", queue::types::FINANCE_REPORT),
        ("/legal/generate_report", queue::types::LEGAL_REPORT),
    ] {
        let Some(t) = task_types(config).find(|t| t.name == kind) else {
            continue;
        };
        // A filter's fields may also be `null`, which the route reads as absent.
        let mut schema = payload_schema(t);
        if let Some(object) = schema
            .pointer_mut("/anyOf/0/properties")
            .and_then(Value::as_object_mut)
        {
            for field in object.values_mut() {
                *field = json!({"anyOf": [field.take(), {"type": "null"}]});
            }
        }
        let pointer = format!("/paths/{}/post/requestBody/content", escape(path));
        if let Some(content) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            for c in content.values_mut() {
                c["schema"] = schema.clone();
            }
        }
    }
}

/// `GET /tasks/types`' answer (its schema is [`task_types_schema`]).
#[derive(ToSchema)]
#[schema(as = TaskTypes)]
#[allow(dead_code)]
pub(crate) struct TaskTypesSchema {
    /// Each type and its payload fields.
    types: Vec<serde_json::Value>,
}

/// The schemas that follow `queue`'s registry rather than a derive: a submission (one variant
/// per task type) and the registry itself.
fn add_queue_schemas(doc: &mut Value, config: &Config) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["TaskTypes"] = task_types_schema();
    schemas["SubmitTask"] = submit_schema(config);
    let statuses: Vec<&str> = queue::Status::ALL.iter().map(|s| s.as_str()).collect();
    let priorities: Vec<&str> = queue::Priority::ALL.iter().map(|p| p.as_str()).collect();
    schemas["Task"]["properties"]["status"] = json!({"type": "string", "enum": statuses,
        "description": "Where it is in its life."});
    schemas["Task"]["properties"]["priority"] = json!({"type": "string", "enum": priorities,
        "description": "Its priority."});
    let longtask = longtask_schema(config);
    if let Some(body) = doc.pointer_mut("/paths/~1longtask/post/requestBody/content") {
        for content in body
            .as_object_mut()
            .into_iter()
            .flat_map(|c| c.values_mut())
        {
            content["schema"] = longtask.clone();
        }
    }
    // Each server-sent event, as schemathesis and other clients parse the stream.
    if let Some(stream) =
        doc.pointer_mut("/paths/~1tasks~1{id}~1events/get/responses/200/content/text~1event-stream")
    {
        stream["schema"] = json!({
            "type": "object",
            "description": "One event: `status` (data: the task as JSON), `progress` (data: its \
                            progress as JSON) or `error` (the queue cannot be read).",
            "properties": {
                "event": {"type": "string", "enum": ["status", "progress", "error"]},
                "data": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
        });
    }
}

/// `POST /longtask`'s body, as `tasks::longtask` reads it: an object whose `task` (else `type`)
/// names a task type runs as that type, its other fields (but `priority`) the payload; any other
/// object runs as the generic long task, kept whole.
fn longtask_schema(config: &Config) -> Value {
    let every: Vec<&str> = queue::types::TYPES.iter().map(|t| t.name).collect();
    let named = |key: &str| json!({"required": [key], "properties": {key: {"type": "string", "enum": every}}});
    let mut variants = vec![json!({
        "title": "generic",
        "description": "Names no task type in `task` or `type`: runs as `longtask`, the whole body its payload.",
        "type": "object",
        "not": {"anyOf": [named("task"), named("type")]},
    })];
    for t in task_types(config) {
        for key in ["task", "type"] {
            let mut s = payload_schema(t);
            if let Some(object) = s.get("anyOf").and_then(|a| a.get(0)).cloned() {
                s = object;
            }
            s["type"] = json!("object");
            s["title"] = json!(format!("{} by `{key}`", t.name));
            s["properties"][key] = json!({"type": "string", "const": t.name});
            s["properties"]["priority"] = json!({});
            let required = s["required"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut required: Vec<Value> = required;
            required.push(json!(key));
            s["required"] = Value::Array(required);
            if key == "type" {
                // `task` is read first: with `type` naming the type, a `task` field is payload.
                if !t.open {
                    s["properties"]["task"] = json!({"not": {}});
                } else {
                    s["not"] = named("task");
                }
            }
            variants.push(s);
        }
    }
    json!({"anyOf": variants})
}

/// `GET /tasks/types`' answer.
fn task_types_schema() -> Value {
    json!({
        "type": "object",
        "required": ["types"],
        "properties": {"types": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "description", "fields", "open"],
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "open": {"type": "boolean", "description": "Any JSON object is its payload."},
                "fields": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "kind", "required"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string", "enum": ["number", "integer", "string"]},
                        "required": {"type": "boolean"},
                        "min": {"type": "integer"},
                        "max": {"type": "integer"},
                        "max_len": {"type": "integer", "minimum": 0},
                    },
                }},
            },
        }}},
        "example": {"types": [{"name": "add", "description": "adds two numbers",
            "open": false, "fields": [{"name": "a", "kind": "number", "required": true}]}]},
    })
}

/// The task types a submission to this gateway may name (the Casitas reports only with their
/// domain services, as `rental::check_task` refuses them otherwise).
pub(crate) fn task_types(config: &Config) -> impl Iterator<Item = &'static queue::types::TaskType> {
    let finances = !config.finances_url.is_empty();
    let legal = !config.legal_url.is_empty();
    queue::types::TYPES.iter().filter(move |t| match t.name {
        queue::types::FINANCE_REPORT => finances,
        queue::types::LEGAL_REPORT => legal,
        _ => true,
    })
}

/// The payload schema of one task type, as `queue::types::validate` checks it.
pub(crate) fn payload_schema(t: &queue::types::TaskType) -> Value {
    use queue::types::FieldKind;
    if t.open {
        return json!({"type": ["object", "null"], "description": "Any JSON object, kept whole."});
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in t.fields {
        let mut s = match f.kind {
            FieldKind::Number => json!({"type": "number"}),
            FieldKind::Integer { min, max } => {
                json!({"type": "integer", "minimum": min, "maximum": max})
            }
            FieldKind::String { max_len } => json!({"type": "string", "maxLength": max_len}),
        };
        if t.name == queue::types::FINANCE_REPORT && f.name == "month" {
            s["pattern"] = json!(MONTH_PATTERN);
        }
        properties.insert(f.name.to_string(), s);
        if f.required {
            required.push(f.name);
        }
    }
    let object = json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    });
    if required.is_empty() {
        // A type without required fields also takes no payload at all.
        json!({"anyOf": [object, {"type": "null"}]})
    } else {
        object
    }
}

/// `YYYY-MM`, month 01 to 12 (`api::wire::rental::is_month`).
pub(crate) const MONTH_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])$";

/// `POST /tasks`' body: one variant per task type, its payload checked as the queue checks it.
fn submit_schema(config: &Config) -> Value {
    let variants: Vec<Value> = task_types(config)
        .map(|t| {
            let payload = payload_schema(t);
            let payload_required = payload.get("anyOf").is_none() && !t.open;
            let mut required = vec!["type"];
            if payload_required {
                required.push("payload");
            }
            json!({
                "type": "object",
                "title": t.name,
                "description": t.description,
                "additionalProperties": false,
                "required": required,
                "properties": {
                    "type": {"type": "string", "const": t.name},
                    "payload": payload,
                    "priority": {"type": ["string", "null"], "enum": ["high", "normal", "low", null],
                        "description": "`normal` when absent."},
                    "max_attempts": {"type": ["integer", "null"], "minimum": 1,
                        "maximum": queue::MAX_ATTEMPTS,
                        "description": "Attempts before the task is dead; the queue's default when absent."},
                },
            })
        })
        .collect();
    json!({
        "description": "A task to run: its type (`GET /tasks/types`) and a payload of that \
                        type's fields.",
        "oneOf": variants,
        "example": {"type": "sleep", "payload": {"ms": 500}, "priority": "high"},
    })
}
