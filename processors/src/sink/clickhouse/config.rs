//! ClickHouse sink settings: where it is and who to be. Credentials come
//! from the environment or a file, never from the URL, so no log line or
//! error can carry them.

use std::time::Duration;

/// Where the ClickHouse sink writes.
#[derive(Clone)]
pub struct ClickHouseConfig {
    /// HTTP endpoint without credentials, e.g. `http://clickhouse:8123`.
    pub url: String,
    /// Database of Spendstream's tables.
    pub database: String,
    /// User, when not the server's default.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Bound on one request (an insert of one processor batch included).
    pub timeout: Duration,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ClickHouseConfig {
    /// Parses `http://host:port[/database]` (database `default` when
    /// absent). A user or password in the URL is refused: they go in
    /// `SPENDSTREAM_CLICKHOUSE_USER` / `…_PASSWORD` (or `…_PASSWORD_FILE`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(
                    "https is not built in yet; reach ClickHouse over http (a local TLS proxy)"
                        .into(),
                );
            }
            other => return Err(format!("scheme `{other}`; expected http://host:port")),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "credentials do not belong in the URL; set SPENDSTREAM_CLICKHOUSE_USER and \
                 SPENDSTREAM_CLICKHOUSE_PASSWORD (or _PASSWORD_FILE)"
                    .into(),
            );
        }
        let host = parsed.host_str().ok_or("no host")?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err("no query or fragment expected".into());
        }
        let database = parsed.path().trim_matches('/');
        let database = if database.is_empty() {
            "default"
        } else {
            database
        };
        if !database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("database `{database}`: use letters, digits and _"));
        }
        let port = parsed.port_or_known_default().unwrap_or(8123);
        Ok(Self {
            url: format!("http://{host}:{port}"),
            database: database.to_string(),
            user: None,
            password: None,
            timeout: Duration::from_secs(60),
        })
    }

    /// The client for this database: RowBinary without server-side
    /// validation and without compression, which ClickHouse 18.16 needs.
    pub fn client(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(&self.database)
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        client
    }

    /// The same server without a database: to create Spendstream's one.
    pub fn server_client(&self) -> clickhouse::Client {
        let mut client = self.client();
        client = client.with_database("default");
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = ClickHouseConfig::from_url("http://ch.internal:8123/spend").unwrap();
        assert_eq!(
            (c.url.as_str(), c.database.as_str()),
            ("http://ch.internal:8123", "spend")
        );
        let c = ClickHouseConfig::from_url("http://127.0.0.1:18123").unwrap();
        assert_eq!(c.database, "default");
        for bad in [
            "http://user:secret@h:8123/db",
            "https://h:8443",
            "tcp://h:9000",
            "http://h:8123/db-name",
            "http://h:8123/db?x=1",
            "h:8123",
        ] {
            let error = ClickHouseConfig::from_url(bad).unwrap_err();
            assert!(!error.contains("secret"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let mut c = ClickHouseConfig::from_url("http://h:8123/db").unwrap();
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
