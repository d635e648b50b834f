//! A throwaway PostgreSQL server per test: its own cluster in a temp dir, on 127.0.0.1 at a free
//! port, trust auth for user `fpt`; stopped and deleted on drop. Needs Debian's server binaries.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    port: u16,
    as_root: bool,
    // Removed after `drop` below has stopped the server (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a throwaway cluster on 127.0.0.1 at a free port.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        // PostgreSQL refuses to run as root: then the server runs as Debian's `postgres` user.
        let as_root = run(Command::new("id").arg("-u")).stdout.trim_ascii() == b"0";
        // tempfile makes 0700 dirs; the `postgres` user must be able to enter ours.
        let dir = tempfile::Builder::new().prefix("fpt-pg-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if as_root {
            run(Command::new("chown").arg("-R").arg("postgres:").arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { url: format!("postgres://fpt@127.0.0.1:{port}/postgres"), bin, port, as_root, dir };
        let data = pg.dir.path().join("data");
        pg.server_cmd("initdb").args(["-A", "trust", "-U", "fpt", "--no-sync", "-E", "UTF8", "-D"]).arg(&data).run_ok(&pg);
        // Unix socket in our dir too: the default /var/run/postgresql may not exist or be writable.
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            pg.dir.path().display()
        );
        let log = pg.log();
        pg.server_cmd("pg_ctl").arg("-D").arg(&data).args(["-o", &opts, "-w", "-l"]).arg(&log).arg("start").run_ok(&pg);
        pg
    }

    /// A fresh empty database on this server; returns its URL.
    pub fn database(&self, name: &str) -> String {
        let mut cmd = Command::new(self.bin.join("createdb"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "fpt", name]).run_ok(self);
        format!("postgres://fpt@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's binaries (psql for tests that want to look inside).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A server-side command, run as `postgres` when we are root, from a dir it can enter.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: no checkpoint, the cluster is thrown away anyway. Errors are ignored (we may be unwinding).
        let data = self.dir.path().join("data");
        let _ = self.server_cmd("pg_ctl").arg("-D").arg(data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}

/// `FPT_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    let newest = || {
        let versions = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
        // A client-only package (psql, no initdb) may add a newer version dir: skip it.
        let servers = versions.filter(|e| e.path().join("bin/initdb").exists());
        servers.filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin")))).max().map(|(_, bin)| bin)
    };
    let pg_config = || {
        let out = Command::new("pg_config").arg("--bindir").output().ok().filter(|o| o.status.success())?;
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let bin = std::env::var_os("FPT_PG_BIN").map(PathBuf::from).or_else(newest).or_else(pg_config);
    match bin.filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists()) {
        Some(bin) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found (looked at FPT_PG_BIN, /usr/lib/postgresql/*/bin, pg_config): \
             run `make setup` or `apt-get install postgresql`"
        ),
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

trait RunOk {
    fn run_ok(&mut self, pg: &Postgres);
}

impl RunOk for Command {
    /// Runs to success or panics with the command, its output and the server log's tail.
    fn run_ok(&mut self, pg: &Postgres) {
        let out = self.output().unwrap_or_else(|e| panic!("{self:?}: {e}"));
        if !out.status.success() {
            panic!(
                "{self:?} failed ({}):\n{}\n{}\n--- server log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                pg.log_tail()
            );
        }
    }
}
