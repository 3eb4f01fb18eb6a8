//! systemd's readiness protocol (sd_notify): with `Type=notify`, systemd passes a datagram socket
//! in $NOTIFY_SOCKET and waits for "READY=1" before it counts the mount as started.

use std::os::unix::net::{SocketAddr, UnixDatagram};

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    // A leading '@' names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        log::warn!("sd_notify {state:?}: {e}");
    }
}

/// The mount is live.
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// The mount is going away.
pub fn stopping() {
    send("STOPPING=1");
}
