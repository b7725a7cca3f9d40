//! Property test: for every twinlink message type, over random field values, the bytes that
//! rcl serializes (through r2r and rmw_serialize) equal twinlink's codec's bytes (outside
//! alignment padding), and each side decodes the other's bytes to the same value.

use proptest::prelude::*;
use rand::SeedableRng;
use twin_ros_interop::check_against_rcl;
use twinlink_msgs::testing::RandomValue;

macro_rules! conformance_tests {
    ($( [ $($segment:ident)::+ ] ),* $(,)?) => {
        /// Type names covered by the per-type tests below.
        const COVERED: &[&str] = &[$( <twinlink_msgs::$($segment)::+ as twinlink_msgs::Message>::TYPE_NAME ),*];

        #[allow(non_snake_case)]
        mod per_type {
            use super::*;
            $(
                conformance_test!($($segment)::+);
            )*
        }
    };
}

macro_rules! conformance_test {
    ($pkg:ident :: $kind:ident :: $name:ident $(:: $part:ident)?) => {
        pastey::paste! {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn [<$pkg _ $name $(_ $part)?>](seed in any::<u64>()) {
                type Ours = twinlink_msgs::$pkg::$kind::$name $(::$part)?;
                type Theirs = r2r::$pkg::$kind::$name $(::$part)?;
                let value = Ours::random(&mut rand::rngs::StdRng::seed_from_u64(seed));
                if let Err(e) = check_against_rcl::<Ours, Theirs>(&value) {
                    prop_assert!(false, "seed {}: {}", seed, e);
                }
            }
        }
        }
    };
}

twinlink_msgs::all_message_types!(conformance_tests);

#[test]
fn every_twin_msgs_interface_file_is_covered() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../msgs/twin_msgs");
    for (dir, kind) in [("msg", "msg"), ("srv", "srv")] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy();
            let names = if kind == "msg" {
                vec![format!("twin_msgs/msg/{stem}")]
            } else {
                vec![
                    format!("twin_msgs/srv/{stem}_Request"),
                    format!("twin_msgs/srv/{stem}_Response"),
                ]
            };
            for name in names {
                assert!(
                    COVERED.contains(&name.as_str()),
                    "{name} has no conformance test"
                );
            }
        }
    }
}
