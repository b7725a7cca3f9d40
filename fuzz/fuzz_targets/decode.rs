//! Feeds arbitrary bytes to the decoder of every twinlink message type. Any panic, overflow,
//! out-of-memory or hang is a bug: hostile buffers must give an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlink_msgs::codec;

macro_rules! decode_all {
    ($( [ $($segment:ident)::+ ] ),* $(,)?) => {
        |data: &[u8]| {
            $(
                if let Ok(message) = codec::decode::<twinlink_msgs::$($segment)::+>(data) {
                    // Whatever decodes must encode again, and decode to the same value.
                    let again = codec::encode(&message).expect("a decoded message encodes");
                    let back = codec::decode::<twinlink_msgs::$($segment)::+>(&again).expect("re-decodes");
                    assert!(back == message || format!("{back:?}").contains("NaN"));
                }
            )*
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let decode = twinlink_msgs::all_message_types!(decode_all);
    decode(data);
});
