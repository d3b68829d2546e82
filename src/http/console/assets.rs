//! The console's pages, embedded in the binary (no Node at build time, nothing fetched at run
//! time): one HTML shell, one stylesheet, one script (plain JS, no framework). Served gzipped
//! when the client accepts it (compressed once, at first use), with a strong ETag (a hash of the
//! content) and `Cache-Control: no-cache` (the browser keeps a copy and revalidates: a new
//! binary's assets are seen at once, an unchanged one costs a 304).

use std::io::Write;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("assets/index.html"),
};

/// The files under `/console/assets/`.
pub const FILES: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
];

/// An asset's ETag and gzipped body, computed once.
struct Prepared {
    etag: String,
    gzip: Vec<u8>,
}

fn prepared(asset: &Asset) -> &'static Prepared {
    static CACHE: OnceLock<Vec<(&'static str, Prepared)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(FILES.iter())
            .map(|a| {
                let hash = Sha256::digest(a.body);
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                gz.write_all(a.body).expect("gzip into memory");
                (
                    a.name,
                    Prepared {
                        etag: format!("\"{}\"", hex::encode(&hash[..16])),
                        gzip: gz.finish().expect("gzip into memory"),
                    },
                )
            })
            .collect()
    });
    &all.iter()
        .find(|(n, _)| *n == asset.name)
        .expect("every asset is prepared")
        .1
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q0 = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            name.eq_ignore_ascii_case("gzip") && !q0
        })
}

/// The response for `asset`: 304 when the client's copy is current, else the body (gzipped
/// when accepted).
pub fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let p = prepared(asset);
    let etag = HeaderValue::from_str(&p.etag).expect("hex is a header value");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == p.etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) {
        let mut r = p.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_etag_and_304() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, "gzip, br".parse().unwrap());
        let r = serve(&FILES[0], &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let etag = r.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve(&FILES[0], &h).status(), StatusCode::NOT_MODIFIED);
        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        assert!(
            serve(&FILES[0], &plain)
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_none()
        );
    }

    #[test]
    fn no_inline_script_or_handler_in_the_shell() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        assert!(!html.contains("<script>"));
        assert!(!html.contains(" onclick") && !html.contains(" onload"));
        assert!(!html.contains("style="));
        let js = std::str::from_utf8(FILES[0].body).unwrap();
        assert!(
            !js.contains("innerHTML"),
            "data is rendered with textContent only"
        );
    }
}
