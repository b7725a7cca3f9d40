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
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-lib=dylib=python{version}");
    }
}
