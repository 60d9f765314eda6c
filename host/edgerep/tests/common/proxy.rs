//! A UDP relay standing between two nodes, for tests of bad links: it forwards datagrams both
//! ways, and can cut the link, drop, duplicate and delay datagrams (a random delay reorders
//! them). Deterministic for a seed, except for the scheduling of its threads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// What happens to datagrams on their way (each way alike).
#[derive(Debug, Clone, Copy, Default)]
pub struct Weather {
    /// Per mille of datagrams dropped.
    pub loss_per_mille: u32,
    /// Per mille of datagrams delivered twice.
    pub duplicate_per_mille: u32,
    /// Every datagram waits this long ...
    pub delay: Duration,
    /// ... plus up to this much more, drawn per datagram (datagrams overtake each other).
    pub jitter: Duration,
}

/// The relay. Datagrams sent to `addr` go to the target; the target's answers go back to the
/// last sender.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    weather: Arc<Mutex<Weather>>,
    stop: Arc<AtomicBool>,
}

/// A datagram waiting for its time: (due, sequence for a stable order, bytes, destination).
type Due = Reverse<(Instant, u64, Vec<u8>, SocketAddr)>;

impl Proxy {
    pub fn start(target: SocketAddr, seed: u64) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let weather: Arc<Mutex<Weather>> = Arc::default();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        for (way, (from, to, forward)) in [(front, back, true), (back2, front2, false)]
            .into_iter()
            .enumerate()
        {
            let (cut, stop, client, weather) =
                (cut.clone(), stop.clone(), client.clone(), weather.clone());
            let (tx, rx) = mpsc::channel::<Due>();
            let stop2 = stop.clone();
            std::thread::spawn(move || deliver(to, rx, stop2));
            std::thread::spawn(move || {
                let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (way as u64 + 1);
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut buf = vec![0u8; 65_536];
                let mut n_sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let dest = if forward {
                        *client.lock().unwrap() = Some(src);
                        target
                    } else {
                        match *client.lock().unwrap() {
                            Some(c) => c,
                            None => continue,
                        }
                    };
                    let w = *weather.lock().unwrap();
                    if (next() % 1000) < u64::from(w.loss_per_mille) {
                        continue;
                    }
                    let copies = if (next() % 1000) < u64::from(w.duplicate_per_mille) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let jitter_us = w.jitter.as_micros() as u64;
                        let extra = if jitter_us == 0 {
                            0
                        } else {
                            next() % jitter_us
                        };
                        let due = Instant::now() + w.delay + Duration::from_micros(extra);
                        n_sent += 1;
                        if tx
                            .send(Reverse((due, n_sent, buf[..n].to_vec(), dest)))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        Proxy {
            addr,
            cut,
            weather,
            stop,
        }
    }

    /// Cuts the link (every datagram dropped), or mends it.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::Relaxed);
    }

    /// Sets the weather for datagrams from now on.
    pub fn set_weather(&self, weather: Weather) {
        *self.weather.lock().unwrap() = weather;
    }
}

/// Sends each datagram at its due time.
fn deliver(socket: UdpSocket, rx: mpsc::Receiver<Due>, stop: Arc<AtomicBool>) {
    let mut waiting: BinaryHeap<Due> = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while waiting.peek().is_some_and(|Reverse(d)| d.0 <= now) {
            let Reverse((_, _, bytes, dest)) = waiting.pop().unwrap();
            let _ = socket.send_to(&bytes, dest);
        }
        let wait = waiting
            .peek()
            .map_or(Duration::from_millis(20), |Reverse(d)| {
                d.0.saturating_duration_since(now)
            })
            .min(Duration::from_millis(20));
        match rx.recv_timeout(wait) {
            Ok(d) => waiting.push(d),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Routes each `(from, to)` link through a [`Proxy`]: `from`'s config names the proxy as
/// `to`'s address.
pub fn proxied(configs: &[PathBuf], links: &[(usize, usize)]) -> Vec<Proxy> {
    links
        .iter()
        .enumerate()
        .map(|(i, &(from, to))| {
            let listen = edgerep_config::Config::load(&configs[to])
                .unwrap()
                .replication
                .listen;
            let proxy = Proxy::start(listen, i as u64 + 1);
            let text = std::fs::read_to_string(&configs[from]).unwrap();
            let text = text.replace(
                &format!("address = \"{listen}\""),
                &format!("address = \"{}\"", proxy.addr),
            );
            std::fs::write(&configs[from], text).unwrap();
            proxy
        })
        .collect()
}
