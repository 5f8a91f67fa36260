//! URL templates: the target authority plus a path-and-query with placeholders, and the key
//! popularity samplers behind them.
//!
//! Placeholders: `{seq}` (a counter shared by all connections, from 1), `{uniform:N}` (a key drawn
//! uniformly from 1..=N) and `{zipf:N}` (a key drawn from 1..=N with probability proportional to
//! 1/k, i.e. Zipf with s = 1). Rendering writes into a buffer the caller reuses, so a request costs
//! no string allocation beyond the URI the HTTP library needs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Uri;
use http::uri::{Authority, PathAndQuery};
use rand::Rng;

use crate::Error;

/// A Zipf(s = 1) sampler over 1..=n by inverse CDF over a precomputed table.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[k - 1]` = P(X <= k); the last entry is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// Precomputes the table for keys 1..=n (n >= 1). Memory is 8 bytes per key.
    pub fn new(n: u64) -> Self {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / k as f64;
            cdf.push(sum);
        }
        for p in &mut cdf {
            *p /= sum;
        }
        // Guard against rounding: the last bucket must catch every u < 1.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { cdf }
    }

    /// The number of keys.
    pub fn len(&self) -> u64 {
        self.cdf.len() as u64
    }

    /// Always false: a sampler has at least one key.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Draws one key in 1..=n.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.r#gen();
        self.cdf.partition_point(|&p| p <= u) as u64 + 1
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Seq,
    Uniform(u64),
    Zipf(Arc<Zipf>),
}

/// One target URL: where to connect and what path to ask for.
#[derive(Debug, Clone)]
pub(crate) struct UrlTemplate {
    /// The URL as given, for the report.
    pub(crate) original: String,
    /// `host:port`, for the TCP connection and the `Host` header.
    pub(crate) authority: Authority,
    /// The path and query when it has no placeholder (cloning a `Uri` is a reference count bump).
    fixed: Option<Uri>,
    segments: Vec<Segment>,
}

impl UrlTemplate {
    /// Parses `http://host[:port][/path?query]` with optional placeholders in the path and query.
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(bad(
                "https is not supported: the generator speaks plain HTTP/1.1",
            ));
        } else {
            return Err(bad("expected a URL starting with http://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains(['{', '}']) {
            return Err(bad("placeholders are allowed in the path and query only"));
        }
        let mut authority: Authority = authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if authority.host().is_empty() {
            return Err(bad("missing host"));
        }
        if authority.port().is_none() {
            authority = format!("{}:80", authority.host())
                .parse()
                .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        }
        let path = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let segments = parse_segments(&path).map_err(|r| bad(&r))?;
        let fixed = match segments.as_slice() {
            [] => Some(Uri::from_static("/")),
            [Segment::Literal(s)] => Some(
                s.parse::<PathAndQuery>()
                    .map(Uri::from)
                    .map_err(|e| bad(&e.to_string()))?,
            ),
            _ => None,
        };
        let template = UrlTemplate {
            original: url.to_owned(),
            authority,
            fixed,
            segments,
        };
        // Render once so that a template which can never make a valid URI fails now, not per request.
        let mut buf = String::new();
        let mut rng = rand::thread_rng();
        template
            .render(&mut buf, &AtomicU64::new(0), &mut rng)
            .map_err(|_| bad("the path does not make a valid URI"))?;
        Ok(template)
    }

    /// Appends the path and query of one request to `out` (a serialized request). The template
    /// was rendered once at parse time, and placeholders only make digits, so it is a valid
    /// request target.
    pub(crate) fn write_path<R: Rng + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        seq: &AtomicU64,
        rng: &mut R,
    ) {
        use std::io::Write as _;
        if let Some(path) = self.fixed_path() {
            out.extend_from_slice(path.as_bytes());
            return;
        }
        for segment in &self.segments {
            // Writing to a Vec cannot fail.
            let _ = match segment {
                Segment::Literal(s) => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                Segment::Seq => write!(out, "{}", seq.fetch_add(1, Ordering::Relaxed) + 1),
                Segment::Uniform(n) => write!(out, "{}", rng.gen_range(1..=*n)),
                Segment::Zipf(z) => write!(out, "{}", z.sample(rng)),
            };
        }
    }

    /// The path and query when the template has no placeholder.
    pub(crate) fn fixed_path(&self) -> Option<&str> {
        self.fixed
            .as_ref()
            .map(|uri| uri.path_and_query().map_or("/", |p| p.as_str()))
    }

    /// The path-and-query URI for one request; `buf` is scratch space reused between calls.
    pub(crate) fn render<R: Rng + ?Sized>(
        &self,
        buf: &mut String,
        seq: &AtomicU64,
        rng: &mut R,
    ) -> Result<Uri, http::uri::InvalidUri> {
        if let Some(uri) = &self.fixed {
            return Ok(uri.clone());
        }
        buf.clear();
        for segment in &self.segments {
            // Writing to a String cannot fail.
            let _ = match segment {
                Segment::Literal(s) => {
                    buf.push_str(s);
                    Ok(())
                }
                Segment::Seq => write!(buf, "{}", seq.fetch_add(1, Ordering::Relaxed) + 1),
                Segment::Uniform(n) => write!(buf, "{}", rng.gen_range(1..=*n)),
                Segment::Zipf(z) => write!(buf, "{}", z.sample(rng)),
            };
        }
        Uri::try_from(buf.as_str())
    }
}

fn parse_segments(path: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            segments.push(Segment::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "unclosed `{` in placeholder".to_owned())?
            + open;
        let inner = &rest[open + 1..close];
        segments.push(parse_placeholder(inner)?);
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_owned()));
    }
    Ok(segments)
}

fn parse_placeholder(inner: &str) -> Result<Segment, String> {
    let count = |n: &str| -> Result<u64, String> {
        match n.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("`{{{inner}}}`: expected a key count >= 1")),
        }
    };
    match inner.split_once(':') {
        None if inner == "seq" => Ok(Segment::Seq),
        Some(("uniform", n)) => Ok(Segment::Uniform(count(n)?)),
        Some(("zipf", n)) => {
            let n = count(n)?;
            // The table costs 8 bytes per key.
            if n > 10_000_000 {
                return Err(format!("`{{{inner}}}`: at most 10000000 keys"));
            }
            Ok(Segment::Zipf(Arc::new(Zipf::new(n))))
        }
        _ => Err(format!(
            "unknown placeholder `{{{inner}}}` (expected {{seq}}, {{uniform:N}} or {{zipf:N}})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn zipf_key_one_is_most_frequent_and_frequencies_fall_like_one_over_k() {
        let zipf = Zipf::new(1000);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; 1001];
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!((1..=1000).contains(&k));
            counts[k as usize] += 1;
        }
        let max_key = (1..=1000).max_by_key(|&k| counts[k]).unwrap();
        assert_eq!(max_key, 1);
        // P(k) = 1 / (k * H_1000), H_1000 ~ 7.485: count(1) / count(k) ~ k.
        for k in [2usize, 4, 10] {
            let ratio = counts[1] as f64 / counts[k] as f64;
            assert!(
                (ratio / k as f64 - 1.0).abs() < 0.15,
                "count(1)/count({k}) = {ratio}, expected about {k}"
            );
        }
        let expected_first = draws as f64 / 7.485;
        assert!((counts[1] as f64 / expected_first - 1.0).abs() < 0.05);
    }

    #[test]
    fn templates_render_placeholders() {
        let t = UrlTemplate::parse("http://127.0.0.1:9/data?key=k-{seq}&u={uniform:3}").unwrap();
        let seq = AtomicU64::new(0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut buf = String::new();
        let a = t.render(&mut buf, &seq, &mut rng).unwrap();
        let b = t.render(&mut buf, &seq, &mut rng).unwrap();
        assert!(a.to_string().starts_with("/data?key=k-1&u="));
        assert!(b.to_string().starts_with("/data?key=k-2&u="));
        assert_eq!(t.authority.as_str(), "127.0.0.1:9");
    }

    #[test]
    fn default_port_and_path() {
        let t = UrlTemplate::parse("http://localhost").unwrap();
        assert_eq!(t.authority.as_str(), "localhost:80");
        let mut buf = String::new();
        let uri = t
            .render(&mut buf, &AtomicU64::new(0), &mut rand::thread_rng())
            .unwrap();
        assert_eq!(uri.to_string(), "/");
    }

    #[test]
    fn bad_templates_are_refused() {
        for url in [
            "https://x/",
            "ftp://x/",
            "http://x/{nope}",
            "http://x/{zipf:0}",
            "http://x/{seq",
            "http://{seq}/",
        ] {
            assert!(UrlTemplate::parse(url).is_err(), "{url} was accepted");
        }
    }
}
