//! Redaction of URLs for logs and `check-config`: passwords and query strings masked.

/// [`redact_url`], keeping an empty string empty.
pub fn redact_url_or_empty(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        redact_url(text)
    }
}

/// A URL with its password (and any query string, which may carry tokens) replaced, for logs.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "host" || k == "port" || k == "dbname" {
                            v.into_owned()
                        } else {
                            "***".to_string()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
            url.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?sslmode=require&host=/run"),
            "postgres://u:***@h:5432/db?sslmode=***&host=%2Frun"
        );
        assert_eq!(redact_url("x"), "<unparseable URL>");
    }
}
