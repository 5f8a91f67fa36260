//! What to send ([`Plan`]) and how ([`RunConfig`]): the library face of the generator.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::Error;
use crate::template::UrlTemplate;

/// The requests of a run: one method, one or more URL templates taken round robin, fixed headers
/// and an optional body. Build it once; every connection shares it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) method: Method,
    pub(crate) urls: Vec<UrlTemplate>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Opt-in: the top-level JSON field of each answer's body whose values are counted (e.g.
    /// `service_id`, to see the spread over the instances behind a gateway). Off by default:
    /// it costs a JSON parse per answer.
    pub(crate) count_field: Option<String>,
}

impl Plan {
    /// A plan that sends `method` to each URL in turn. URLs are `http://host[:port]/path?query`,
    /// with optional `{seq}`, `{uniform:N}` and `{zipf:N}` placeholders in the path and query.
    pub fn new<S: AsRef<str>>(method: Method, urls: &[S]) -> Result<Self, Error> {
        if urls.is_empty() {
            return Err(Error::Args("at least one URL is needed".into()));
        }
        let urls = urls
            .iter()
            .map(|u| UrlTemplate::parse(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            method,
            urls,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            count_field: None,
        })
    }

    /// A plan of `GET url`.
    pub fn get(url: &str) -> Result<Self, Error> {
        Self::new(Method::GET, &[url])
    }

    /// Adds a header sent with every request (a repeated name adds a second value).
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let bad = || Error::Header(format!("{name}: {value}"));
        let name = HeaderName::try_from(name).map_err(|_| bad())?;
        let value = HeaderValue::try_from(value).map_err(|_| bad())?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// Adds a `Name: value` header as `-H` gives it.
    pub fn header_line(self, line: &str) -> Result<Self, Error> {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Error::Header(line.to_owned()))?;
        self.header(name.trim(), value.trim())
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn bearer(mut self, token: &str) -> Result<Self, Error> {
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::Header("Authorization: Bearer <token>".into()))?;
        self.headers.insert(AUTHORIZATION, value);
        Ok(self)
    }

    /// Sends `body` with every request. Unless a `Content-Type` header is set, the body is sent as
    /// `application/json` (the lab's services take JSON).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        if !self.body.is_empty() && !self.headers.contains_key(CONTENT_TYPE) {
            self.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        self
    }

    /// Counts the values of the top-level JSON field `name` in the answers' bodies (strings as
    /// they are, other values as JSON text); they appear in [`Report::field_counts`]
    /// (`crate::Report`). Answers whose body is not a JSON object with that field are not
    /// counted.
    ///
    /// [`Report::field_counts`]: crate::Report::field_counts
    pub fn count_field(mut self, name: &str) -> Self {
        self.count_field = Some(name.to_owned());
        self
    }

    /// The URLs as given.
    pub fn urls(&self) -> Vec<String> {
        self.urls.iter().map(|u| u.original.clone()).collect()
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Every connection sends its next request as soon as the previous answer is in.
    Closed,
    /// A constant arrival rate (requests per second, over all connections). Each connection sends
    /// on a fixed schedule; latency is measured from the intended send time, so a slow answer that
    /// delays the following requests is charged to them too (coordinated omission corrected, as
    /// wrk2 does).
    Open {
        /// Requests per second, over all connections.
        rate: f64,
    },
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Keep-alive HTTP/1.1 connections, each with at most one request in flight.
    pub connections: usize,
    /// Closed or open model.
    pub load: Load,
    /// Stop issuing requests after this long (from the moment all connections are open).
    pub duration: Option<Duration>,
    /// Stop after this many requests in all. With both limits the first one reached ends the run;
    /// with neither, the run lasts 10 seconds.
    pub requests: Option<u64>,
    /// A request not answered in full within this long counts as a `timeout` error.
    pub timeout: Duration,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            connections: 50,
            load: Load::Closed,
            duration: None,
            requests: None,
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }
}

impl RunConfig {
    /// The effective duration limit: the one given, or 10 seconds when no limit is given at all.
    pub(crate) fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.connections == 0 {
            return Err(Error::Args("--connections must be at least 1".into()));
        }
        if let Load::Open { rate } = self.load
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(Error::Args("--rate must be a positive number".into()));
        }
        if self.timeout.is_zero() {
            return Err(Error::Args("--timeout must be positive".into()));
        }
        Ok(())
    }
}
