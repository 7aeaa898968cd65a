//! Tauri's build step: embeds the UI (web/dist-desktop, made by `scripts/web.sh build`), the
//! capabilities and the icons, and copies the bundled models beside the binary.

fn main() {
    if !std::path::Path::new("../web/dist-desktop/index.html").exists() {
        panic!(
            "the desktop app embeds the UI from web/dist-desktop: run `scripts/web.sh build` first"
        );
    }
    tauri_build::build();
}
