//! Mount an empty power-cut filesystem at DIR until stdin closes or a line
//! is read, printing its counters (for trying things by hand).
//!
//!     cargo run -p pacs-mirror-powercut --example mount -- /tmp/mnt

use std::io::BufRead;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: mount DIR");
        std::process::exit(2);
    };
    let fs = match pacs_mirror_powercut::Mounted::mount_new(dir.as_ref()) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("mount {dir}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("mounted at {dir}; press Enter to unmount");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    eprintln!("{:?}", fs.counters());
    fs.unmount();
}
