//! A throwaway PostgreSQL server for tests.
//!
//! [`TestPostgres::start`] gives each test a database of its own:
//!
//! * with `TOLLSTREAM_TEST_PG_URL` set (e.g. `postgres://me@127.0.0.1:5432/postgres`), a
//!   fresh database `tollstream_test_…` created on that server, dropped afterwards;
//! * otherwise a new PostgreSQL cluster in a temporary directory (`initdb`, then `pg_ctl
//!   start` on a free port on 127.0.0.1, fsync left on, password authentication over TCP as
//!   a real server has: the user `postgres` with the password [`PASSWORD`]), stopped and
//!   removed on drop. As
//!   root it runs as the `postgres` user through `runuser` (initdb refuses root). The
//!   binaries are looked for in `TOLLSTREAM_TEST_PG_BIN`, `/usr/lib/postgresql/*/bin`
//!   (newest first) and `PATH`; without them the error says what to install.
//!
//! Tests that stop and start the server ([`TestPostgres::stop`]) need a cluster of their
//! own: [`TestPostgres::start_cluster`]. [`TestPostgres::start_tls_cluster`] makes one with
//! `ssl = on` and a certificate signed by a test CA ([`TestPostgres::ca_pem`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

/// The environment variable that points the tests at an existing server.
pub const URL_VARIABLE: &str = "TOLLSTREAM_TEST_PG_URL";
/// The environment variable naming the directory of `initdb` and `pg_ctl`.
pub const BIN_VARIABLE: &str = "TOLLSTREAM_TEST_PG_BIN";
/// The password of the user `postgres` on a test cluster (connections over TCP must give
/// it: scram-sha-256).
pub const PASSWORD: &str = "tollstream-test-password";

/// A database for one test, on a cluster of its own or on the developer's server.
pub struct TestPostgres {
    url: String,
    cluster: Option<Cluster>,
    /// On the developer's server: the URL to connect to for dropping the database, and
    /// its name.
    external: Option<(String, String)>,
}

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// With `ssl = on`: the PEM certificate of the CA that signed the server's certificate.
    ca_pem: Option<String>,
}

/// The files of a TLS cluster, in its directory: the server's certificate and key.
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

impl TestPostgres {
    /// A database on the developer's server (`TOLLSTREAM_TEST_PG_URL`) or on a new cluster.
    ///
    /// # Errors
    /// No server binaries and no URL; the cluster or database could not be created.
    pub fn start() -> anyhow::Result<Self> {
        match std::env::var(URL_VARIABLE) {
            Ok(url) if !url.is_empty() => Self::on_server(&url),
            _ => Self::start_cluster(),
        }
    }

    /// A new cluster of its own, whatever `TOLLSTREAM_TEST_PG_URL` says: for tests that
    /// stop and start the server.
    ///
    /// # Errors
    /// No server binaries; initdb or pg_ctl failed.
    pub fn start_cluster() -> anyhow::Result<Self> {
        Self::new_cluster(false)
    }

    /// A new cluster of its own with `ssl = on`: its certificate, for `localhost` and
    /// `127.0.0.1`, is signed by a test CA whose certificate [`TestPostgres::ca_pem`] gives.
    /// Plain connections are accepted too; [`TestPostgres::url`] has no `sslmode`.
    ///
    /// # Errors
    /// No server binaries; the certificates could not be made; initdb or pg_ctl failed.
    pub fn start_tls_cluster() -> anyhow::Result<Self> {
        Self::new_cluster(true)
    }

    fn new_cluster(tls: bool) -> anyhow::Result<Self> {
        let bin = find_binaries()?;
        let as_postgres = rustix::process::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("tollstream-pg-")
            .tempdir()
            .context("creating a directory for the PostgreSQL cluster")?;
        if as_postgres {
            let exists = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                bail!(
                    "running as root, the test PostgreSQL cluster runs as the user `postgres`, \
                     which does not exist (the postgresql package creates it); or set {URL_VARIABLE}"
                );
            }
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            as_postgres,
            running: false,
            ca_pem: None,
        };
        cluster.initdb()?;
        if tls {
            cluster.ca_pem = Some(cluster.write_server_certificate()?);
        }
        cluster.start()?;
        Ok(Self {
            url: format!(
                "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
                cluster.port
            ),
            cluster: Some(cluster),
            external: None,
        })
    }

    fn on_server(url: &str) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tollstream_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let mut admin = connect(url).with_context(|| {
            format!("connecting to {URL_VARIABLE} (a server the tests create databases on)")
        })?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating database {name} ({URL_VARIABLE})"))?;
        Ok(Self {
            url: with_database(url, &name),
            cluster: None,
            external: Some((url.to_owned(), name)),
        })
    }

    /// The URL of the test's database, password included, e.g.
    /// `postgres://postgres:…@127.0.0.1:54321/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its password, and the password (if it had one): for configurations
    /// that keep the password in a file.
    pub fn url_and_password(&self) -> (String, Option<String>) {
        let Ok(config) = self.url.parse::<postgres::Config>() else {
            return (self.url.clone(), None);
        };
        let Some(password) = config.get_password() else {
            return (self.url.clone(), None);
        };
        let password = String::from_utf8_lossy(password).into_owned();
        let (scheme, rest) = self
            .url
            .split_once("://")
            .unwrap_or(("postgres", &self.url));
        let at = rest.find('@').unwrap_or(0);
        let user = rest[..at].split(':').next().unwrap_or_default();
        (format!("{scheme}://{user}{}", &rest[at..]), Some(password))
    }

    /// The PEM certificate of the CA that signed the server's certificate: a cluster made
    /// by [`TestPostgres::start_tls_cluster`] has one.
    pub fn ca_pem(&self) -> Option<&str> {
        self.cluster.as_ref().and_then(|c| c.ca_pem.as_deref())
    }

    /// A new connection to the test's database, for the test's own queries.
    ///
    /// # Errors
    /// When the server cannot be reached. Do not call it inside an async runtime.
    pub fn client(&self) -> anyhow::Result<postgres::Client> {
        match &self.cluster {
            // Through the Unix socket (trust): no password hashing per connection, which a
            // debug build takes its time over.
            Some(cluster) => Ok(postgres::Config::new()
                .host_path(cluster.dir.path())
                .port(cluster.port)
                .user("postgres")
                .dbname("postgres")
                .connect(postgres::NoTls)?),
            None => connect(&self.url),
        }
    }

    /// Stops the server (fast shutdown: open connections are cut).
    ///
    /// # Errors
    /// Not a cluster of its own, or pg_ctl failed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let cluster = self
            .cluster
            .as_mut()
            .context("only a cluster of its own can be stopped (TestPostgres::start_cluster)")?;
        cluster.stop("fast")
    }

    /// Starts the stopped server again, on the same port.
    ///
    /// # Errors
    /// Not a cluster of its own, or pg_ctl failed.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let cluster = self
            .cluster
            .as_mut()
            .context("only a cluster of its own can be started")?;
        cluster.pg_ctl_start()
    }

    /// The server's log (own cluster only), for failure messages.
    pub fn log(&self) -> String {
        self.cluster
            .as_ref()
            .and_then(|c| std::fs::read_to_string(c.dir.path().join("log")).ok())
            .unwrap_or_default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(cluster) = &mut self.cluster
            && cluster.running
        {
            let _ = cluster.stop("immediate");
        }
        if let Some((url, name)) = &self.external
            && let Ok(mut admin) = connect(url)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let password_file = self.dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
        if self.as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&password_file))?;
        }
        let pwfile = format!("--pwfile={}", password_file.display());
        run(self.command("initdb").arg("-D").arg(self.data()).args([
            &pwfile,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ]))
        .context("initdb of the test PostgreSQL cluster")
    }

    /// Makes a test CA and a server certificate it signs, writes the certificate and key
    /// where `ssl_cert_file` and `ssl_key_file` point (the key readable by the server's
    /// user only, or PostgreSQL refuses it), and returns the CA's PEM certificate.
    fn write_server_certificate(&self) -> anyhow::Result<String> {
        use rcgen::{
            CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let ca = test_ca("tollstream test CA")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let cert_file = self.dir.path().join(SERVER_CERT);
        let key_file = self.dir.path().join(SERVER_KEY);
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if self.as_postgres {
            run(Command::new("chown")
                .arg("postgres:")
                .arg(&cert_file)
                .arg(&key_file))?;
        }
        Ok(ca.pem())
    }

    /// Starts on a free port, trying another one if it was taken meanwhile.
    fn start(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = crate::harness::free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("tried"))
    }

    fn pg_ctl_start(&mut self) -> anyhow::Result<()> {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on -c max_connections=40",
            self.port,
            self.dir.path().display()
        );
        if self.ca_pem.is_some() {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/{SERVER_CERT} -c ssl_key_file={dir}/{SERVER_KEY}"
            ));
        }
        let started = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        if let Err(error) = started {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(error.context(format!(
                "starting the test PostgreSQL cluster on port {}; its log ends:\n{}",
                self.port,
                tail.join("\n")
            )));
        }
        self.running = true;
        Ok(())
    }

    fn stop(&mut self, mode: &str) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"]))?;
        self.running = false;
        Ok(())
    }
}

/// A self-signed test CA named `name`.
fn test_ca(name: &str) -> anyhow::Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        KeyPair::generate()?,
    )?)
}

/// The PEM certificate of a new test CA that signed nothing: a server certificate checked
/// against it does not verify (`UnknownIssuer`).
///
/// # Errors
/// The certificate could not be made.
pub fn unrelated_ca_pem() -> anyhow::Result<String> {
    Ok(test_ca("tollstream unrelated test CA")?.pem())
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_binaries() -> anyhow::Result<PathBuf> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BIN_VARIABLE) {
        let dir = PathBuf::from(dir);
        if has(&dir) {
            return Ok(dir);
        }
        bail!(
            "{BIN_VARIABLE}={} holds no initdb and pg_ctl",
            dir.display()
        );
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has(dir))
    {
        return Ok(dir);
    }
    bail!(
        "the PostgreSQL tests need a server: install one (Debian: apt-get install postgresql-15; \
         binaries in /usr/lib/postgresql/15/bin), set {BIN_VARIABLE} to the directory of \
         initdb and pg_ctl, or set {URL_VARIABLE}=postgres://USER@HOST:PORT/DB to use a \
         server of yours (each test creates and drops a database of its own there)"
    )
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn connect(url: &str) -> anyhow::Result<postgres::Client> {
    let mut config: postgres::Config = url.parse().context("parsing the PostgreSQL URL")?;
    config.connect_timeout(Duration::from_secs(10));
    Ok(config.connect(postgres::NoTls)?)
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.split_once('?').map(|(_, q)| q);
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "t"),
            "postgres://u:p@h:5/t?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://u@h", "t"), "postgresql://u@h/t");
    }
}
