//! The admin client behind `sluice deploy`, `rollback`, `status` and
//! `pipelines`: HTTP/1.1 requests to a host's API (`--host
//! http://127.0.0.1:7070`), with the bearer token from `SLUICE_TOKEN` or a
//! token file. The host speaks plain HTTP; put it behind a TLS proxy (or an
//! SSH tunnel) to reach it across a network.

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host URL is not `http://host:port`.
    #[error("`{0}` is not a host URL of the form http://host:port")]
    Url(String),
    /// The host cannot be reached.
    #[error("cannot reach {url}: {message}")]
    Connect {
        /// The host.
        url: String,
        /// Why.
        message: String,
    },
    /// The exchange failed.
    #[error("request to {url} failed: {message}")]
    Http {
        /// The host.
        url: String,
        /// Why.
        message: String,
    },
}

/// A host's API.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    authority: String,
    token: Option<String>,
}

/// An answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON from the API).
    pub body: String,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Client {
    /// A client of the host at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        let authority = rest.trim_end_matches('/').to_string();
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(ClientError::Url(url.to_string()));
        }
        Ok(Client {
            url: format!("http://{authority}"),
            authority,
            token,
        })
    }

    /// Sends one request; `body` for POST/PUT.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let err = |message: String| ClientError::Http {
            url: self.url.clone(),
            message,
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| ClientError::Connect {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:7070", None).is_ok());
        assert!(Client::new("http://127.0.0.1:7070/", None).is_ok());
        for bad in ["https://h:1", "127.0.0.1:7070", "http://h", "http://h:1/x"] {
            assert!(Client::new(bad, None).is_err(), "{bad}");
        }
    }
}
