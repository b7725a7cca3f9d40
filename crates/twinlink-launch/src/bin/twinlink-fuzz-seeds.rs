//! `twinlink-fuzz-seeds DIR`: writes valid encodings of random values of every message type
//! into DIR, as the starting corpus for the decoder fuzzer (`make fuzz`).

use anyhow::{Context as _, Result};
use rand::SeedableRng;
use twinlink_msgs::codec;
use twinlink_msgs::testing::RandomValue;

macro_rules! write_seeds {
    ($( [ $($segment:ident)::+ ] ),* $(,)?) => {
        |dir: &std::path::Path, rng: &mut rand::rngs::StdRng| -> Result<usize> {
            let mut written = 0;
            $(
                for i in 0..4 {
                    let value = <twinlink_msgs::$($segment)::+>::random(rng);
                    let name = format!("{}_{i}", stringify!($($segment)_+));
                    std::fs::write(dir.join(name), codec::encode(&value)?)?;
                    written += 1;
                }
            )*
            Ok(written)
        }
    };
}

fn main() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .context("usage: twinlink-fuzz-seeds DIR")?;
    let dir = std::path::Path::new(&dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let write = twinlink_msgs::all_message_types!(write_seeds);
    let written = write(dir, &mut rng)?;
    println!("wrote {written} seed inputs to {}", dir.display());
    Ok(())
}
