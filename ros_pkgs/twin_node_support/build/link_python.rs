//! The ROS 2 Jazzy wheels' librcl needs libpython's symbols at load time; link libpython so
//! binaries start without LD_PRELOAD. scripts/env.sh sets the variables; with a ROS install
//! that does not need it, they are simply absent.
fn main() {
    println!("cargo:rerun-if-env-changed=TWINLINK_PYTHON_LIBDIR");
    println!("cargo:rerun-if-env-changed=TWINLINK_PYTHON_VERSION");
    if let (Ok(dir), Ok(version)) = (
        std::env::var("TWINLINK_PYTHON_LIBDIR"),
        std::env::var("TWINLINK_PYTHON_VERSION"),
    ) {
        // --no-as-needed: nothing in the binary refers to libpython itself, only librcl's
        // dependencies do, so the linker would otherwise drop it.
        println!("cargo:rustc-link-arg=-L{dir}");
        println!(
            "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-lpython{version},--pop-state"
        );
    }
}
