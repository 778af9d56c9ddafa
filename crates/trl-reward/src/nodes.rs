//! Multi-node data parallelism: one process per node, started as torchrun starts them (a node
//! count, this node's rank, node 0's address and port). Worker 0 of every node sums its node's
//! gradients with the other nodes' here, over TCP: each node sends its buffer to node 0, which
//! adds them in rank order and sends the sum back, so every node steps on the same bits.
//!
//! burn-collective 0.21's global mode was tried first and is not used: its second all-reduce
//! of a session never completes (with the tree and centralized strategies; the ring one
//! refuses buffers shorter than the node count), and a session per all-reduce races its data
//! server's teardown.
//!
//! Wire format, little-endian. Hello (node r → 0): `TRLN`, version `u32`, node count `u32`,
//! rank `u32`, run fingerprint `u64`; node 0 answers with a `u32` length and that many bytes
//! of error message (0: accepted). A sum: `u64` tag (the call's step and part), `u64` length,
//! then the `f32` values; node 0 answers with the same framing, or with tag `u64::MAX` and an
//! error message in place of the values.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Result, RewardError};

const MAGIC: &[u8; 4] = b"TRLN";
const VERSION: u32 = 1;
const ERROR_TAG: u64 = u64::MAX;
/// Longest error message a node accepts from another.
const MAX_MESSAGE: usize = 64 << 10;

/// This process's place in a multi-node run, as torchrun's `--nnodes`, `--node_rank`,
/// `--master_addr` and `--master_port` say it. Node 0 listens on `master_port`; every node
/// must reach it within `timeout` at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    pub count: usize,
    pub rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub timeout: Duration,
}

impl Nodes {
    /// Rejects a rank outside the node count, and a worker count the nodes cannot share evenly.
    pub fn check(&self, workers: usize) -> Result<()> {
        if self.count == 0 || self.rank >= self.count {
            return Err(RewardError::Config(format!(
                "node rank {} of {} nodes: ranks go from 0 to the node count - 1",
                self.rank, self.count
            )));
        }
        if !workers.is_multiple_of(self.count) {
            return Err(RewardError::Config(format!(
                "data_parallel = {workers} workers over {} nodes: give each node as many (a multiple of the node count)",
                self.count
            )));
        }
        Ok(())
    }

    /// This node's workers, of `workers` over all nodes.
    pub fn local(&self, workers: usize) -> usize {
        workers / self.count.max(1)
    }
}

fn net_err(what: impl std::fmt::Display) -> RewardError {
    RewardError::Nodes(what.to_string())
}

/// Node 0's links to every other node, or another node's link to node 0.
pub(crate) struct NodeLink {
    rank: usize,
    /// Node 0: the streams of nodes 1.. in rank order; another node: node 0's.
    streams: Vec<TcpStream>,
}

impl NodeLink {
    /// Joins the run: node 0 waits for every other node, the others connect to node 0, each
    /// within `nodes.timeout`. Nodes whose `fingerprint` (of their settings and data) differs
    /// from node 0's are refused.
    pub(crate) fn connect(nodes: &Nodes, fingerprint: u64) -> Result<Self> {
        let deadline = Instant::now() + nodes.timeout;
        let streams = if nodes.rank == 0 {
            accept_all(nodes, fingerprint, deadline)?
        } else {
            vec![join(nodes, fingerprint, deadline)?]
        };
        Ok(Self { rank: nodes.rank, streams })
    }

    /// `values` summed over every node (node 0 adds them in rank order, so each node gets the
    /// same bits). `tag` must be the same on every node: a node at another step is an error.
    pub(crate) fn sum(&self, tag: u64, mut values: Vec<f32>) -> Result<Vec<f32>> {
        if self.rank != 0 {
            let node0 = &self.streams[0];
            send(node0, tag, &values)
                .map_err(|e| net_err(format!("sending to node 0 failed ({e}): see node 0's output")))?;
            let (got, len) = read_header(node0).map_err(|e| lost(0, e))?;
            if got == ERROR_TAG {
                return Err(net_err(format!("node 0: {}", read_message(node0, len)?)));
            }
            check_frame(0, got, tag, len, values.len())?;
            read_values(node0, &mut values).map_err(|e| lost(0, e))?;
            return Ok(values);
        }
        let mut theirs = vec![0f32; values.len()];
        for (i, s) in self.streams.iter().enumerate() {
            let rank = i + 1;
            let checked = read_header(s)
                .map_err(|e| lost(rank, e))
                .and_then(|(got, len)| check_frame(rank, got, tag, len, values.len()));
            if let Err(e) = checked {
                self.tell_all(&e.to_string());
                return Err(e);
            }
            read_values(s, &mut theirs).map_err(|e| lost(rank, e))?;
            for (v, t) in values.iter_mut().zip(&theirs) {
                *v += t;
            }
        }
        for (i, s) in self.streams.iter().enumerate() {
            send(s, tag, &values).map_err(|e| lost(i + 1, e))?;
        }
        Ok(values)
    }

    /// Node 0 passes `message` on to every other node, as the reason the run ends.
    fn tell_all(&self, message: &str) {
        for s in &self.streams {
            let _ = send_error(s, message);
        }
    }
}

fn lost(rank: usize, e: std::io::Error) -> RewardError {
    net_err(format!("the link to node {rank} broke ({e}): see that node's output"))
}

fn check_frame(rank: usize, got: u64, tag: u64, len: u64, want: usize) -> Result<()> {
    if got != tag {
        return Err(net_err(format!(
            "node {rank} is at step {}, this node at step {}: start every node from the same checkpoint (--resume on all of them, or on none)",
            got / 2,
            tag / 2
        )));
    }
    if len != want as u64 {
        return Err(net_err(format!(
            "node {rank} sent {len} values where this node has {want}: run the same model on every node"
        )));
    }
    Ok(())
}

fn accept_all(nodes: &Nodes, fingerprint: u64, deadline: Instant) -> Result<Vec<TcpStream>> {
    let port = nodes.master_port;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        net_err(format!("node 0 cannot listen on port {port} ({e}): pick a free one (--master-port, MASTER_PORT)"))
    })?;
    listener.set_nonblocking(true).map_err(net_err)?;
    let mut streams: Vec<Option<TcpStream>> = (1..nodes.count).map(|_| None).collect();
    while streams.iter().any(Option::is_none) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = streams
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(net_err(format!(
                        "node(s) {} did not join within {} s: start them with --node-rank, and --master-addr/--master-port reaching this node (port {port})",
                        missing.join(", "),
                        nodes.timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(net_err(e)),
        };
        stream.set_nonblocking(false).map_err(net_err)?;
        stream.set_read_timeout(Some(nodes.timeout)).map_err(net_err)?;
        let (rank, verdict) = match read_hello(&stream) {
            Ok((count, rank, theirs)) => (rank, hello_verdict(nodes, count, rank, theirs, fingerprint, &streams)),
            // a stranger (a port scan, a wrong client): not a node, not counted
            Err(_) => continue,
        };
        let answer = verdict.as_deref().unwrap_or("");
        let _ = (&stream).write_all(&[&(answer.len() as u32).to_le_bytes()[..], answer.as_bytes()].concat());
        if let Some(v) = verdict {
            return Err(net_err(format!("refused node {rank}: {v}")));
        }
        stream.set_read_timeout(None).map_err(net_err)?;
        let _ = stream.set_nodelay(true);
        streams[rank - 1] = Some(stream);
    }
    Ok(streams.into_iter().flatten().collect())
}

/// Why node 0 refuses a hello, if it does.
fn hello_verdict(
    nodes: &Nodes,
    count: usize,
    rank: usize,
    theirs: u64,
    fingerprint: u64,
    joined: &[Option<TcpStream>],
) -> Option<String> {
    if count != nodes.count {
        return Some(format!(
            "it was started for {count} nodes, node 0 for {}: give every node the same --nodes",
            nodes.count
        ));
    }
    if rank == 0 || rank >= nodes.count {
        return Some(format!("rank {rank} is not one of 1..{} (node 0 is this one)", nodes.count - 1));
    }
    if joined[rank - 1].is_some() {
        return Some(format!("two nodes started with --node-rank {rank}"));
    }
    if theirs != fingerprint {
        return Some(
            "its settings or training data differ from node 0's (batch size, workers, accumulation, seed, pairs, model size): start every node with the same ones"
                .into(),
        );
    }
    None
}

fn read_hello(stream: &TcpStream) -> std::io::Result<(usize, usize, u64)> {
    let mut buf = [0u8; 24];
    (&*stream).read_exact(&mut buf)?;
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    if &buf[..4] != MAGIC || u32_at(4) != VERSION {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a trl-rs node of this version"));
    }
    Ok((u32_at(8) as usize, u32_at(12) as usize, u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"))))
}

fn join(nodes: &Nodes, fingerprint: u64, deadline: Instant) -> Result<TcpStream> {
    let at = format!("{}:{}", nodes.master_addr, nodes.master_port);
    let stream = loop {
        let tried = at.to_socket_addrs().and_then(|mut a| {
            let addr = a.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        });
        match tried {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(net_err(format!(
                    "could not reach node 0 at {at} within {} s ({e}): start node 0 (--node-rank 0), and give every node its address (--master-addr, --master-port, or MASTER_ADDR, MASTER_PORT)",
                    nodes.timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(MAGIC);
    for v in [VERSION, nodes.count as u32, nodes.rank as u32] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    hello.extend_from_slice(&fingerprint.to_le_bytes());
    stream.set_read_timeout(Some(nodes.timeout)).map_err(net_err)?;
    (&stream).write_all(&hello).map_err(|e| lost(0, e))?;
    let mut len = [0u8; 4];
    (&stream).read_exact(&mut len).map_err(|e| lost(0, e))?;
    let len = u32::from_le_bytes(len) as u64;
    if len > 0 {
        return Err(net_err(format!("node 0 refused this node: {}", read_message(&stream, len)?)));
    }
    stream.set_read_timeout(None).map_err(net_err)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn send(mut s: &TcpStream, tag: u64, values: &[f32]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + 4 * values.len());
    buf.extend_from_slice(&tag.to_le_bytes());
    buf.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&buf)
}

fn send_error(mut s: &TcpStream, message: &str) -> std::io::Result<()> {
    let bytes = &message.as_bytes()[..message.len().min(MAX_MESSAGE)];
    s.write_all(&[&ERROR_TAG.to_le_bytes()[..], &(bytes.len() as u64).to_le_bytes(), bytes].concat())
}

fn read_header(mut s: &TcpStream) -> std::io::Result<(u64, u64)> {
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf)?;
    Ok((
        u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(buf[8..].try_into().expect("8 bytes")),
    ))
}

fn read_message(mut s: &TcpStream, len: u64) -> Result<String> {
    if len > MAX_MESSAGE as u64 {
        return Err(net_err(format!("a node sent a {len}-byte message; at most {MAX_MESSAGE} are read")));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).map_err(|e| lost(0, e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads `values.len()` values (the length was checked against the header).
fn read_values(mut s: &TcpStream, values: &mut [f32]) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4 * values.len().min(1 << 20)];
    for chunk in values.chunks_mut(1 << 20) {
        let bytes = &mut buf[..4 * chunk.len()];
        s.read_exact(bytes)?;
        for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
    }
    Ok(())
}

/// FNV-1a over `bytes`: the run fingerprint nodes compare when they join.
pub(crate) fn fingerprint(parts: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: usize, rank: usize, port: u16) -> Nodes {
        Nodes { count, rank, master_addr: "127.0.0.1".into(), master_port: port, timeout: Duration::from_secs(20) }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Three nodes sum in rank order and all get node 0's bits; a node a step behind is
    /// refused with both steps named, on every node.
    #[test]
    fn three_nodes_sum_and_a_lagging_node_is_named() {
        let port = free_port();
        let run = |rank: usize| {
            std::thread::spawn(move || {
                let link = NodeLink::connect(&nodes(3, rank, port), 7)?;
                let first = link.sum(2, vec![rank as f32 + 0.5, 1e8, -(rank as f32)])?;
                let second = link.sum(if rank == 2 { 2 } else { 4 }, vec![1.0]);
                Ok::<_, RewardError>((first, second.map_err(|e| e.to_string())))
            })
        };
        let threads: Vec<_> = (0..3).map(run).collect();
        for t in threads {
            let (first, second) = t.join().unwrap().unwrap();
            assert_eq!(first, vec![0.5 + 1.5 + 2.5, 3e8, -3.0]);
            let err = second.unwrap_err();
            assert!(err.contains("node 2 is at step 1, this node at step 2"), "{err}");
        }
    }

    #[test]
    fn a_node_with_other_settings_is_refused() {
        let port = free_port();
        let zero = std::thread::spawn(move || NodeLink::connect(&nodes(2, 0, port), 1).map(|_| ()));
        let one = NodeLink::connect(&nodes(2, 1, port), 2).map(|_| ()).unwrap_err().to_string();
        assert!(one.contains("node 0 refused this node: its settings or training data differ"), "{one}");
        let zero = zero.join().unwrap().unwrap_err().to_string();
        assert!(zero.contains("refused node 1"), "{zero}");
    }

    #[test]
    fn a_missing_node_0_is_an_error_in_time() {
        let mut n = nodes(2, 1, free_port());
        n.timeout = Duration::from_millis(300);
        let err = NodeLink::connect(&n, 0).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("could not reach node 0 at 127.0.0.1:") && err.contains("--master-port"), "{err}");
        assert!(Nodes { count: 2, rank: 2, ..n.clone() }
            .check(2)
            .unwrap_err()
            .to_string()
            .contains("node rank 2 of 2"));
        assert!(n.check(3).unwrap_err().to_string().contains("3 workers over 2 nodes"));
    }
}
