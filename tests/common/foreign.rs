//! A foreign server: a TCP listener on loopback that answers nothing and counts what reaches it
//! (connections and bytes). A test that points a vault's answers at it proves that nothing —
//! least of all the token — is sent anywhere but the vault.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Foreign {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Foreign {
    /// Listens on `ip` (e.g. `127.0.0.1`, or `127.0.0.2`: all of 127/8 is loopback on Linux) at a
    /// free port.
    pub fn start(ip: &str) -> Foreign {
        let listener = TcpListener::bind((ip, 0)).expect("foreign listener binds");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, bytes, stop) = (connections.clone(), bytes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut open = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((stream, _)) = listener.accept() {
                        connections.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_nonblocking(true);
                        open.push(stream);
                    }
                    let mut buf = [0u8; 4096];
                    for stream in &mut open {
                        if let Ok(n) = stream.read(&mut buf) {
                            bytes.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Foreign {
            addr,
            connections,
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://ip:port` of the listener.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
