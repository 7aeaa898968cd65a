//! The user interface (Leptos, client-side rendered): the engine's status, the model panel,
//! the assistant, the live view of the search, and share links.

mod assistant;
mod engine;
mod live_view;
mod models_panel;
mod share_panel;
pub mod state;
mod tauri;

use leptos::prelude::*;

use crate::ui::state::AppState;
use ets_protocol::ModelInfo;

pub use ets_protocol::models::format_bytes;

/// "LlamaForCausalLM · 0.9M parameters · 1.8 MB" (and "· 2 matrices split for the device"
/// when some were larger than one of its buffers).
fn loaded_label(m: &ModelInfo) -> String {
    if let Some(server) = &m.served_by {
        return format!("{} · {server}", m.architecture);
    }
    let split = match m.split_matrices {
        0 => String::new(),
        1 => " · 1 matrix split for the device".into(),
        n => format!(" · {n} matrices split for the device"),
    };
    format!(
        "{} · {:.1}M parameters · {}{split}",
        m.architecture,
        m.parameters as f64 / 1e6,
        format_bytes(m.bytes)
    )
}

/// The app. `?backend=cpu` in the page's URL skips WebGPU (the desktop app reads `ETS_BACKEND`);
/// `?max-buffer-bytes=N` makes the engine split matrices larger than N bytes, as on an adapter
/// with that binding limit (for tests).
#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    let search = window().location().search().unwrap_or_default();
    let max_buffer_bytes = search
        .trim_start_matches('?')
        .split('&')
        .find_map(|pair| pair.strip_prefix("max-buffer-bytes="))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0);
    engine::start(state, !search.contains("backend=cpu"), max_buffer_bytes);
    share_panel::open_links(state);
    let home = if engine::is_desktop() {
        "this app"
    } else {
        "your browser"
    };
    view! {
        <header class="top">
            <h1>"ETS" <small>" energy-guided test-time scaling, on your device"</small></h1>
            <span class="backend" data-testid="backend">
                {move || match state.backend.get() {
                    None => "starting the engine…".to_string(),
                    Some(b) => format!("{}: {}", b.kind, b.adapter),
                }}
            </span>
        </header>
        {move || {
            state.backend.get().and_then(|b| b.notice).map(|n| {
                view! { <p class="notice" data-testid="notice">{n}</p> }
            })
        }}
        {move || {
            state.error.get().map(|e| {
                view! {
                    <p class="error" data-testid="error">
                        {e}
                        <button on:click=move |_| state.error.set(None)>"×"</button>
                    </p>
                }
            })
        }}
        <main>
            <div class="side">
                <models_panel::ModelsPanel />
            </div>
            <div class="work">
                <assistant::Assistant />
                <share_panel::SharePanel />
                <live_view::LiveView />
            </div>
        </main>
        <footer>{format!("Nothing leaves this machine: the model runs in {home}.")}</footer>
    }
}
