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

/// Encodes an envelope (not yet sealed).
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    postcard::to_stdvec(envelope).expect("envelopes always serialize")
}

/// Encodes an envelope into `out` (cleared first), reusing its allocation.
pub fn encode_into(envelope: &Envelope, out: &mut Vec<u8>) {
    out.clear();
    let bytes = postcard::to_extend(envelope, std::mem::take(out)).expect("envelopes serialize");
    *out = bytes;
}

/// Decodes an opened frame.
pub fn decode(bytes: &[u8]) -> Result<Envelope, postcard::Error> {
    postcard::from_bytes(bytes)
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
        encode_into(&e, &mut reused);
        assert_eq!(reused, bytes);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[0xff; 8]).is_err());
    }
}
