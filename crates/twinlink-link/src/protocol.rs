//! What travels inside sealed frames and handshakes (postcard-encoded, then sealed).

use serde::{Deserialize, Serialize};

use crate::sync::{Ack, WireItem};

/// The plaintext of one sealed frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender's clock when the frame was sealed, microseconds since the Unix epoch.
    pub sent_us: u64,
    /// Acknowledgement of the other direction, when there is something to acknowledge.
    pub ack: Option<Ack>,
    /// Messages and skips.
    pub items: Vec<WireItem>,
    /// The sender's view of the path, for the peer's rate control and prediction.
    pub report: Option<PathReport>,
}

/// What one end measured of the path from its peer, sent back to the peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// Goodput received from the peer over the last report interval, bits per second.
    pub received_bps: u64,
    /// Frames received from the peer in the interval.
    pub frames: u32,
    /// Frames the peer sent in the interval that did not arrive (counter gaps).
    pub lost: u32,
    /// Change of one-way delay over the interval, microseconds (positive: queues grow).
    pub delay_gradient_us: i64,
    /// Mean one-way delay above its 10 s minimum: the queueing delay, microseconds.
    pub queue_delay_us: u64,
    /// The reporter's own estimate of its sending path's bottleneck rate [bit/s].
    pub sender_bottleneck_bps: u64,
}

/// Synchronization state exchanged in the handshake so both ends can catch up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The next sequence number this end's receiver waits for.
    pub rx_next: u64,
    /// This end's oldest unacknowledged sequence number (everything below was applied).
    pub tx_base: u64,
    /// An id of this process' incarnation (random at start), so the peer sees restarts.
    pub incarnation: u64,
    /// The longest this end holds an acknowledgement for data to ride on, microseconds:
    /// the peer adds it to its retransmission timeout (as QUIC's `max_ack_delay`), so a
    /// delayed acknowledgement does not look like a loss.
    pub max_ack_delay_us: u64,
}

/// First byte of a frame's plaintext: the envelope follows as it is.
const FORMAT_PLAIN: u8 = 0;
/// First byte of a frame's plaintext: the envelope follows LZ4-compressed (a block with its
/// length, u32 little endian, in front).
const FORMAT_LZ4: u8 = 1;
/// The largest envelope a compressed frame may announce (a bound against decompression
/// bombs; the outbox holds at most this much by default).
pub const MAX_ENVELOPE_BYTES: usize = 64 << 20;
/// Envelopes shorter than this are never compressed (too little to gain).
const COMPRESS_FROM: usize = 64;

/// Why an opened frame's plaintext is not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Nothing at all.
    #[error("empty plaintext")]
    Empty,
    /// The format byte is not one this end knows.
    #[error("unknown plaintext format {0}")]
    UnknownFormat(u8),
    /// A compressed envelope announced more than [`MAX_ENVELOPE_BYTES`].
    #[error("compressed envelope announces {0} bytes; at most {MAX_ENVELOPE_BYTES} are allowed")]
    TooLarge(usize),
    /// The compressed block is damaged.
    #[error("compressed envelope: {0}")]
    Decompress(String),
    /// The envelope's encoding is damaged.
    #[error("envelope: {0}")]
    Envelope(#[from] postcard::Error),
}

/// Encodes an envelope (not yet sealed), uncompressed.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    encode_with(envelope, false)
}

/// Encodes an envelope; with `compress`, LZ4-compressed when that makes it smaller (the
/// format byte in front says which). A link end whose path is scarce (a vehicle's uplink)
/// compresses; the receiver takes both.
pub fn encode_with(envelope: &Envelope, compress: bool) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(envelope, compress, &mut out);
    out
}

/// Encodes an envelope into `out` (cleared first), reusing its allocation.
pub fn encode_into(envelope: &Envelope, compress: bool, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_PLAIN);
    let bytes = postcard::to_extend(envelope, std::mem::take(out)).expect("envelopes serialize");
    *out = bytes;
    if compress && out.len() > COMPRESS_FROM {
        let packed = lz4_flex::block::compress_prepend_size(&out[1..]);
        if packed.len() + 1 < out.len() {
            out.clear();
            out.push(FORMAT_LZ4);
            out.extend_from_slice(&packed);
        }
    }
}

/// Decodes an opened frame's plaintext.
pub fn decode(bytes: &[u8]) -> Result<Envelope, PayloadError> {
    let (&format, rest) = bytes.split_first().ok_or(PayloadError::Empty)?;
    match format {
        FORMAT_PLAIN => Ok(postcard::from_bytes(rest)?),
        FORMAT_LZ4 => {
            let announced = rest
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| PayloadError::Decompress("no length".into()))?;
            if announced > MAX_ENVELOPE_BYTES {
                return Err(PayloadError::TooLarge(announced));
            }
            let plain = lz4_flex::block::decompress_size_prepended(rest)
                .map_err(|e| PayloadError::Decompress(e.to_string()))?;
            Ok(postcard::from_bytes(&plain)?)
        }
        other => Err(PayloadError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Message, Priority};
    use std::sync::Arc;

    #[test]
    fn envelopes_round_trip_and_garbage_is_an_error() {
        let e = Envelope {
            sent_us: 123,
            ack: Some(Ack {
                next_expected: 5,
                received_next: 6,
                ranges: vec![(7, 9)],
                echo_sent_us: 100,
                echo_hold_us: 3,
            }),
            items: vec![
                WireItem::Data {
                    seq: 5,
                    message: Arc::new(Message {
                        stream: "state".into(),
                        priority: Priority::OwnState,
                        type_name: "twin_msgs/msg/VehicleState".into(),
                        created_us: 99,
                        payload: vec![1, 2, 3],
                    }),
                },
                WireItem::Skip { seq: 6 },
            ],
            report: Some(PathReport {
                received_bps: 64_000,
                frames: 10,
                lost: 1,
                delay_gradient_us: -40,
                queue_delay_us: 1200,
                sender_bottleneck_bps: 1_000_000,
            }),
        };
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        let mut reused = vec![9; 3];
        encode_into(&e, false, &mut reused);
        assert_eq!(reused, bytes);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[0xff; 8]).is_err());
        assert!(decode(&[]).is_err());
    }

    fn state_frame(n: usize) -> Envelope {
        Envelope {
            sent_us: 1_765_000_000_000_000,
            ack: None,
            items: (0..n as u64)
                .map(|seq| WireItem::Data {
                    seq,
                    message: Arc::new(Message {
                        stream: "state".into(),
                        priority: Priority::OwnState,
                        type_name: "twin_msgs/msg/VehicleState".into(),
                        created_us: 1_765_000_000_000_000 + seq,
                        // A CDR message: mostly zeros (covariances, padding).
                        payload: (0..468u32)
                            .map(|i| if i % 16 < 3 { (i * 7) as u8 } else { 0 })
                            .collect(),
                    }),
                })
                .collect(),
            report: None,
        }
    }

    #[test]
    fn compressed_envelopes_are_smaller_and_decode_to_the_same() {
        let e = state_frame(2);
        let plain = encode(&e);
        let packed = encode_with(&e, true);
        assert_eq!(packed[0], FORMAT_LZ4);
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decode(&packed).unwrap(), e);
        // Small envelopes, and ones that would not shrink, stay plain.
        let small = Envelope {
            sent_us: 1,
            ..Envelope::default()
        };
        assert_eq!(encode_with(&small, true), encode(&small));
    }

    #[test]
    fn damaged_or_oversized_compressed_envelopes_are_errors() {
        let packed = encode_with(&state_frame(3), true);
        for cut in [1, 3, 5, packed.len() / 2, packed.len() - 1] {
            assert!(decode(&packed[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = packed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        let _ = decode(&flipped); // an error or another envelope, never a panic
        let mut bomb = vec![FORMAT_LZ4];
        bomb.extend_from_slice(&(u32::MAX).to_le_bytes());
        bomb.extend_from_slice(&[0u8; 16]);
        assert!(matches!(decode(&bomb), Err(PayloadError::TooLarge(_))));
        assert!(matches!(
            decode(&[7, 0, 0]),
            Err(PayloadError::UnknownFormat(7))
        ));
    }
}
