//! The decoder treats every buffer as hostile: random bytes, truncations and corruptions of
//! valid messages give an error that names the type (or a valid message), never a panic.

use proptest::prelude::*;
use rand::SeedableRng;
use twinlink_msgs::codec::{self, DecodeError};
use twinlink_msgs::testing::RandomValue;
use twinlink_msgs::twin_msgs::msg::{PerceptionSummary, SharedObservation, VehicleState};
use twinlink_msgs::Message;

fn check_error<M: Message>(result: Result<M, DecodeError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(!e.kind().is_empty());
        prop_assert!(
            e.to_string().contains(M::TYPE_NAME) || matches!(e, DecodeError::Bound(_)),
            "{}",
            e
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_buffers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_error(codec::decode::<PerceptionSummary>(&bytes))?;
        check_error(codec::decode::<VehicleState>(&bytes))?;
        check_error(codec::decode::<SharedObservation>(&bytes))?;
    }

    #[test]
    fn random_buffers_with_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = codec::CDR_LE_HEADER.to_vec();
        bytes.extend_from_slice(&body);
        check_error(codec::decode::<PerceptionSummary>(&bytes))?;
        check_error(codec::decode::<SharedObservation>(&bytes))?;
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error(seed in any::<u64>()) {
        let value = PerceptionSummary::random(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let bytes = codec::encode(&value).unwrap();
        // Cutting only trailing alignment bytes may still decode; anything shorter must not.
        let data_end = twinlink_msgs::layout::encoded_len(&value);
        for cut in 0..data_end {
            prop_assert!(codec::decode::<PerceptionSummary>(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn corrupted_bytes_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let value = SharedObservation::random(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut bytes = codec::encode(&value).unwrap();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        check_error(codec::decode::<SharedObservation>(&bytes))?;
    }
}
