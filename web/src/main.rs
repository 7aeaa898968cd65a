//! The page: mounts the ETS UI.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(ets_app::App);
}
