//! The real binary as a child process: `gcore-gateway serve --log-format json` on the ports of
//! its config, stderr drained (the log) and kept for assertions, killed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{SECRET_A, SECRET_B};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gcore-gateway");

/// A `gcore-gateway serve` child process, killed on drop.
pub struct Binary {
    pub child: Child,
    /// The caller port's address, as the binary announced it.
    pub addr: SocketAddr,
    /// Everything the process wrote to stderr so far (JSON log lines).
    pub stderr: Arc<Mutex<String>>,
    pub config: std::path::PathBuf,
}

impl Binary {
    /// Starts the binary on `config_text` with the test secrets and `RUST_LOG=info`.
    pub fn start(config_text: &str) -> Binary {
        Binary::start_with(config_text, &[])
    }

    /// As [`Binary::start`], with extra (or overriding) environment variables.
    pub fn start_with(config_text: &str, env: &[(&str, &str)]) -> Binary {
        static N: AtomicUsize = AtomicUsize::new(0);
        let config = std::env::temp_dir().join(format!(
            "gcore-gateway-bin-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&config, config_text).unwrap();
        let mut envs: HashMap<String, String> = HashMap::from([
            ("TEST_SECRET_A".into(), SECRET_A.into()),
            ("TEST_SECRET_B".into(), SECRET_B.into()),
            ("RUST_LOG".into(), "info".into()),
        ]);
        envs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut child = Command::new(BIN)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&config)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        // Drains stderr for the whole run (a full pipe would stall the gateway).
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "gcore-gateway serving" {
                        let _ = tx.send(v["listen"].as_str().unwrap_or("").to_string());
                    }
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let listen = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("gateway did not start: {}", stderr.lock().unwrap().as_str())
            });
        Binary {
            child,
            addr: listen.parse().unwrap(),
            stderr,
            config,
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory in KiB (`VmRSS` from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The log so far, one parsed JSON value per line (lines that are not JSON are skipped).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
