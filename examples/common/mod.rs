//! What every example does first.

/// Mesa's device-select Vulkan layer looks for a Wayland display to pick a default GPU and, on a
/// machine without one (a server, CI), prints `error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment.` twice while wgpu opens Vulkan. wgnn picks its adapter itself, so the examples
/// turn the layer off (`NODEVICE_SELECT=1`) where there is no Wayland display and the variable is
/// not set already. Called first in `main`, before any thread starts: the library never changes
/// the process environment.
pub fn quiet_vulkan_layers() {
    let no_wayland = std::env::var_os("WAYLAND_DISPLAY").is_none();
    if no_wayland && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
