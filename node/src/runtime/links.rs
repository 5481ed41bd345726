//! The byte plumbing between the core task and libp2p streams.
//!
//! Framing: a big-endian u32 length, then one wire frame. Each direction of
//! each neighbour pair has its own long-lived stream: the first frame on it
//! is the sender's `Hello` (its contact), everything after is messages.
//!
//! * A **writer** task per neighbour owns our outgoing stream to it. The
//!   core hands it ready-framed byte batches (one per neighbour per core
//!   iteration), so a busy link costs one write and one flush per batch.
//! * A **reader** task per inbound stream decodes frames and passes them to
//!   the core in batches, awaiting room in the core's bounded inbox: a slow
//!   core pushes back through the stream to the sender (TCP backpressure).
//!
//! Malformed input (bad length, undecodable frame, a `Hello` that does not
//! match the authenticated peer) closes that stream only; the peer's other
//! streams and every other peer are unaffected.
//!
//! The receiver confirms a valid `Hello` with one byte. libp2p-stream drops
//! an inbound stream silently when another one is still waiting to be
//! accepted (its hand-over queue holds one stream); waiting for the
//! confirmation turns that silent drop into a quick, bounded retry instead
//! of envelopes written into a stream nobody reads.

use super::Input;
use crate::addr::{PeerAddr, is_valid_contact, node_id};
use bytes::{Buf, Bytes, BytesMut};
use dht::wire::{self, Frame, MAX_FRAME_BYTES, Message};
use dht::{Contact, NodeId};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a new inbound stream may take to introduce itself, and a new
/// outbound stream to be confirmed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The byte a receiver sends back to accept a stream.
const HELLO_OK: u8 = 0x01;
/// Stream openings tried before a link is reported down.
const OPEN_ATTEMPTS: u32 = 5;
/// How long opening a stream (dialling first when not connected) may take
/// before it is tried again. Seen here: right after a ring forms, a dial
/// that libp2p-stream starts can stay pending forever while a new attempt
/// connects at once, so waiting the whole [`HELLO_TIMEOUT`] for it stalled
/// a new link for ten seconds.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages handed to the core in one batch.
const MAX_BATCH: usize = 512;

/// Appends one length-prefixed frame to `out`.
pub(crate) fn push_frame(
    out: &mut Vec<u8>,
    frame: &Frame<PeerAddr>,
) -> Result<(), wire::EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = wire::encode_into(frame, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Why a stream was closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The stream ended or failed.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more than the limit.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A frame did not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] wire::DecodeError),
    /// The first frame was not a valid `Hello` from the connected peer.
    #[error("bad hello: {0}")]
    Hello(String),
}

/// Splits complete frames off the front of `buf`.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, StreamError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(StreamError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, std::io::Error> {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    let start = buf.len();
    let cap = buf.capacity();
    buf.resize(cap, 0);
    let n = stream.read(&mut buf[start..]).await;
    match n {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(n)
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// Reads an inbound stream from `peer` until it ends; returns why it ended.
pub(crate) async fn read_stream(
    peer: PeerId,
    mut stream: Stream,
    inbox: mpsc::Sender<Input>,
    allowed: impl Fn(&PeerId) -> bool,
) -> Result<(), StreamError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The introduction.
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            if let Some(f) = next_frame(&mut buf)? {
                return Ok::<_, StreamError>(f);
            }
            if fill(&mut stream, &mut buf).await? == 0 {
                return Err(StreamError::Hello("stream closed before hello".into()));
            }
        }
    })
    .await
    .map_err(|_| StreamError::Hello("no hello in time".into()))??;
    let from = match wire::decode::<PeerAddr>(&hello)? {
        Frame::Hello(c) => c,
        Frame::Msg(m) => {
            return Err(StreamError::Hello(format!(
                "expected hello, got {}",
                m.name()
            )));
        }
    };
    if !is_valid_contact(&from) || from.addr.peer_id() != Some(peer) || from.id != node_id(&peer) {
        return Err(StreamError::Hello(
            "contact does not match the authenticated peer".into(),
        ));
    }
    if !allowed(&peer) {
        return Err(StreamError::Hello("peer not in allow_peers".into()));
    }
    stream.write_all(&[HELLO_OK]).await?;
    stream.flush().await?;
    let mut batch: Vec<Message<PeerAddr>> = Vec::new();
    loop {
        while let Some(f) = next_frame(&mut buf)? {
            match wire::decode::<PeerAddr>(&f)? {
                Frame::Msg(m) => batch.push(m),
                Frame::Hello(_) => return Err(StreamError::Hello("second hello".into())),
            }
            if batch.len() >= MAX_BATCH {
                send_batch(&inbox, &from, &mut batch).await?;
            }
        }
        if !batch.is_empty() {
            send_batch(&inbox, &from, &mut batch).await?;
        }
        if fill(&mut stream, &mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn send_batch(
    inbox: &mpsc::Sender<Input>,
    from: &Contact<PeerAddr>,
    batch: &mut Vec<Message<PeerAddr>>,
) -> Result<(), StreamError> {
    let msgs = std::mem::take(batch);
    inbox
        .send(Input::Frames {
            from: from.clone(),
            msgs,
        })
        .await
        .map_err(|_| StreamError::Io(std::io::Error::other("node shutting down")))
}

/// Owns our outgoing stream to one neighbour: opens it (dialling if needed),
/// introduces us, then writes every batch the core sends, in order.
pub(crate) async fn write_stream(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    node: NodeId,
    hello: Bytes,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    inbox: mpsc::Sender<Input>,
    // Held until the task ends: the core's shutdown waits for every
    // writer to push its last bytes out (mini-redis's
    // `shutdown_complete`).
    _running: mpsc::Sender<()>,
) {
    let result = async {
        let mut stream = open_confirmed(&mut control, peer, &hello).await?;
        while let Some(first) = rx.recv().await {
            stream.write_all(&first).await.map_err(|e| e.to_string())?;
            // Whatever else is already queued goes out before the flush.
            while let Ok(more) = rx.try_recv() {
                stream.write_all(&more).await.map_err(|e| e.to_string())?;
            }
            stream.flush().await.map_err(|e| e.to_string())?;
        }
        let _ = stream.close().await;
        Ok::<(), String>(())
    }
    .await;
    if let Err(reason) = result {
        tracing::debug!(%peer, %reason, "link down");
        let _ = inbox.send(Input::WriterDown { peer, node }).await;
    }
}

/// Opens a stream, introduces us and waits for the receiver's
/// confirmation, retrying a few times when the stream is dropped unseen.
async fn open_confirmed(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    hello: &[u8],
) -> Result<Stream, String> {
    let mut last = String::new();
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            let jitter = rand::random_range(10..60u64) * u64::from(attempt);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let once = async {
            let mut stream = tokio::time::timeout(
                OPEN_TIMEOUT,
                control.open_stream(peer, crate::transport::RING_PROTOCOL),
            )
            .await
            .map_err(|_| format!("no stream within {OPEN_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
            stream.write_all(hello).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut ok = [0u8; 1];
            stream
                .read_exact(&mut ok)
                .await
                .map_err(|e| format!("not confirmed: {e}"))?;
            if ok[0] != HELLO_OK {
                return Err(format!("unexpected confirmation byte {:#x}", ok[0]));
            }
            Ok::<Stream, String>(stream)
        };
        match tokio::time::timeout(HELLO_TIMEOUT, once).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out opening a stream".into(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dht::Role;

    fn sample_frames() -> Vec<Frame<PeerAddr>> {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let c = Contact::new(
            node_id(&peer),
            PeerAddr::new(&peer, &[], None),
            Role::Application,
        );
        vec![
            Frame::Hello(c),
            Frame::Msg(Message::Ping { nonce: 7 }),
            Frame::Msg(Message::Ack { first: 1, last: 9 }),
        ]
    }

    #[test]
    fn frames_split_at_every_byte() {
        let frames = sample_frames();
        let mut bytes = Vec::new();
        for f in &frames {
            push_frame(&mut bytes, f).unwrap();
        }
        for cut in 0..=bytes.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = next_frame(&mut buf).unwrap() {
                    got.push(wire::decode::<PeerAddr>(&f).unwrap());
                }
            }
            assert_eq!(got, frames, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading_it() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
        assert!(matches!(
            next_frame(&mut buf),
            Err(StreamError::TooLarge(_))
        ));
    }
}
