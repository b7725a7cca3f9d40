//! ROS 2 serialization: a 4-byte encapsulation header, then CDR (XCDR1).
//!
//! Encoding always writes little-endian CDR (`00 01 00 00`), as ROS 2 does on every platform
//! twinlink runs on. Decoding accepts both byte orders and treats every buffer as hostile: it
//! never panics, never allocates more than the buffer can justify, and says what is wrong.

use crate::Message;
use byteorder::{BigEndian, LittleEndian};

/// Length of the encapsulation header that precedes the CDR data.
pub const HEADER_LEN: usize = 4;

/// Encapsulation header for little-endian plain CDR, the one ROS 2 writes.
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// Largest message `decode` accepts unless told otherwise: 64 MiB, enough for a dense
/// LiDAR cloud and far below what would exhaust a host.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Buffers longer than this are refused before any parsing.
    pub max_message_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a buffer could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The buffer cannot even hold the encapsulation header.
    #[error(
        "{type_name}: buffer of {len} bytes is shorter than the 4-byte CDR encapsulation header"
    )]
    MissingHeader {
        /// Expected message type.
        type_name: &'static str,
        /// Buffer length.
        len: usize,
    },
    /// The buffer is larger than the configured limit.
    #[error("{type_name}: buffer of {len} bytes exceeds the {max}-byte message limit")]
    TooLarge {
        /// Expected message type.
        type_name: &'static str,
        /// Buffer length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The header names an encoding other than plain CDR.
    #[error("{type_name}: encapsulation {id:#06x} ({}) is not supported; expected plain CDR (0x0000 or 0x0001)", representation_name(*.id))]
    UnsupportedEncapsulation {
        /// Expected message type.
        type_name: &'static str,
        /// Representation identifier from the header.
        id: u16,
    },
    /// The data ends before the message does.
    #[error("{type_name}: truncated, the buffer ends before the message does")]
    Truncated {
        /// Expected message type.
        type_name: &'static str,
    },
    /// A value in the data is invalid for its type.
    #[error("{type_name}: malformed CDR data: {reason}")]
    Malformed {
        /// Expected message type.
        type_name: &'static str,
        /// What the CDR decoder found.
        reason: String,
    },
    /// Bytes remain after the message (beyond the up to 3 bytes of final alignment).
    #[error("{type_name}: {extra} unexpected bytes after the end of the message")]
    TrailingBytes {
        /// Expected message type.
        type_name: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A bounded string or sequence is longer than its bound.
    #[error(transparent)]
    Bound(#[from] crate::BoundError),
}

impl DecodeError {
    /// A short, stable name for the kind of error, for counters and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingHeader { .. } => "missing_header",
            Self::TooLarge { .. } => "too_large",
            Self::UnsupportedEncapsulation { .. } => "unsupported_encapsulation",
            Self::Truncated { .. } => "truncated",
            Self::Malformed { .. } => "malformed",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::Bound(_) => "bound_exceeded",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The CDR encoder refused a value (e.g. a string or sequence longer than 2^32 - 1).
    #[error("{type_name}: cannot encode: {reason}")]
    Cdr {
        /// Message type.
        type_name: &'static str,
        /// What the encoder said.
        reason: String,
    },
    /// A bounded string or sequence is longer than its bound.
    #[error(transparent)]
    Bound(#[from] crate::BoundError),
}

fn representation_name(id: u16) -> &'static str {
    match id {
        0x0000 => "CDR_BE",
        0x0001 => "CDR_LE",
        0x0002 => "PL_CDR_BE",
        0x0003 => "PL_CDR_LE",
        0x0006 => "CDR2_BE",
        0x0007 => "CDR2_LE",
        0x0008 => "PL_CDR2_BE",
        0x0009 => "PL_CDR2_LE",
        0x000a => "D_CDR2_BE",
        0x000b => "D_CDR2_LE",
        _ => "unknown",
    }
}

/// Encodes `message` as ROS 2 does: header, then little-endian CDR.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    encode_into(message, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `message` to `out` (reusing its allocation).
///
/// CDR alignment is counted from the end of the header, so `out` may already hold other data:
/// the header and message are appended as one unit.
pub fn encode_into<M: Message>(message: &M, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    message.check_bounds()?;
    let start = out.len();
    out.extend_from_slice(&CDR_LE_HEADER);
    // cdr-encoding aligns relative to the bytes it has written, which start after the header.
    let result = cdr_encoding::to_writer::<M, LittleEndian, _>(&mut *out, message);
    result.map_err(|e| {
        out.truncate(start);
        EncodeError::Cdr {
            type_name: M::TYPE_NAME,
            reason: e.to_string(),
        }
    })
}

/// Decodes a ROS 2 serialized message with the default limits.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    decode_with_limits(bytes, &DecodeLimits::default())
}

/// Decodes a ROS 2 serialized message, refusing buffers over `limits`.
pub fn decode_with_limits<M: Message>(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<M, DecodeError> {
    let type_name = M::TYPE_NAME;
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::MissingHeader {
            type_name,
            len: bytes.len(),
        });
    }
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            type_name,
            len: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let body = &bytes[HEADER_LEN..];
    let result = match id {
        0x0001 => cdr_encoding::from_bytes::<M, LittleEndian>(body),
        0x0000 => cdr_encoding::from_bytes::<M, BigEndian>(body),
        _ => return Err(DecodeError::UnsupportedEncapsulation { type_name, id }),
    };
    let (message, consumed) = result.map_err(|e| match e {
        cdr_encoding::Error::Eof => DecodeError::Truncated { type_name },
        cdr_encoding::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated { type_name }
        }
        other => DecodeError::Malformed {
            type_name,
            reason: other.to_string(),
        },
    })?;
    // Writers may pad the end of the data to a 4-byte boundary; anything beyond is an error.
    let extra = body.len() - consumed;
    if extra > 0 && consumed + extra > consumed.div_ceil(4) * 4 {
        return Err(DecodeError::TrailingBytes { type_name, extra });
    }
    message.check_bounds()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry_msgs::msg::{Point, Quaternion};
    use crate::sensor_msgs::msg::{PointCloud2, PointField};
    use crate::std_msgs::msg::Header;
    use crate::twin_msgs::msg::{DetectedObject, PerceptionSummary};

    fn sample_summary() -> PerceptionSummary {
        PerceptionSummary {
            header: Header {
                frame_id: "base_link".into(),
                ..Default::default()
            },
            sensor_id: "lidar_top".into(),
            sensor_kind: PerceptionSummary::SENSOR_LIDAR,
            objects: vec![
                DetectedObject {
                    id: 1,
                    position: Point {
                        x: 12.5,
                        y: -1.0,
                        z: 0.5,
                    },
                    has_velocity: true,
                    ..Default::default()
                };
                3
            ],
            raw_bytes: 1_920_000,
            ..Default::default()
        }
    }

    #[test]
    fn known_bytes_of_a_small_message() {
        // Header: stamp (sec=1, nanosec=2), frame_id "ab": length 3 incl. NUL.
        let header = Header {
            stamp: crate::builtin_interfaces::msg::Time { sec: 1, nanosec: 2 },
            frame_id: "ab".into(),
        };
        let bytes = encode(&header).unwrap();
        assert_eq!(
            bytes,
            [0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', 0]
        );
        assert_eq!(crate::layout::encoded_len(&header), bytes.len());
    }

    #[test]
    fn defaults_from_msg_files_apply() {
        assert_eq!(Quaternion::default().w, 1.0);
        assert_eq!(PointField::FLOAT32, 7);
    }

    #[test]
    fn round_trips_and_sizes_agree() {
        let summary = sample_summary();
        let bytes = encode(&summary).unwrap();
        assert_eq!(crate::layout::encoded_len(&summary), bytes.len());
        assert_eq!(decode::<PerceptionSummary>(&bytes).unwrap(), summary);
    }

    #[test]
    fn encode_into_appends_with_alignment_from_its_own_header() {
        let summary = sample_summary();
        let mut buf = vec![0xAA; 3];
        encode_into(&summary, &mut buf).unwrap();
        assert_eq!(&buf[3..], &encode(&summary).unwrap()[..]);
    }

    #[test]
    fn decodes_big_endian() {
        let header = Header {
            stamp: crate::builtin_interfaces::msg::Time { sec: 1, nanosec: 2 },
            frame_id: "ab".into(),
        };
        let be = [
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, b'a', b'b', 0,
        ];
        assert_eq!(decode::<Header>(&be).unwrap(), header);
    }

    #[test]
    fn rejects_bad_buffers_with_reasons() {
        let good = encode(&sample_summary()).unwrap();
        let err = decode::<PerceptionSummary>(&good[..2]).unwrap_err();
        assert_eq!(err.kind(), "missing_header");
        let err = decode::<PerceptionSummary>(&good[..good.len() - 9]).unwrap_err();
        assert_eq!(err.kind(), "truncated");
        assert!(err.to_string().contains("twin_msgs/msg/PerceptionSummary"));
        let mut wrong = good.clone();
        wrong[1] = 0x07;
        let err = decode::<PerceptionSummary>(&wrong).unwrap_err();
        assert!(err.to_string().contains("CDR2_LE"), "{err}");
        let mut long = good.clone();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode::<PerceptionSummary>(&long).unwrap_err().kind(),
            "trailing_bytes"
        );
        let limits = DecodeLimits {
            max_message_bytes: 16,
        };
        assert_eq!(
            decode_with_limits::<PerceptionSummary>(&good, &limits)
                .unwrap_err()
                .kind(),
            "too_large"
        );
    }

    #[test]
    fn rejects_invalid_values() {
        let cloud = PointCloud2 {
            is_dense: true,
            ..Default::default()
        };
        let mut bytes = encode(&cloud).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = 7; // is_dense must be 0 or 1
        let err = decode::<PointCloud2>(&bytes).unwrap_err();
        assert_eq!(err.kind(), "malformed", "{err}");
        // A sequence length far beyond the buffer is caught without a huge allocation.
        let header = encode(&Header::default()).unwrap();
        let mut huge = header.clone();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode::<PointCloud2>(&huge).is_err());
    }
}
