//! Models: pick the model (and the ETS-IS draft), add one from local files, a Hugging
//! Face-style URL or an inference server, watch downloads, and manage the cache.

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_sys::{FileList, HtmlInputElement};

use crate::browser::cache::import_local;
use crate::ui::state::AppState;
use crate::ui::{engine, tauri};
use crate::ui::{format_bytes, loaded_label};
use ets_protocol::Request;
use ets_protocol::models::{
    BUNDLED, ModelSource, RECOMMENDED, id_for_base, id_for_file, id_for_server, model_location,
    server_url,
};

/// Every model the user can pick: the bundled ones, then the cached ones.
fn model_ids(state: AppState) -> Vec<String> {
    let mut ids: Vec<String> = BUNDLED.iter().map(|m| m.id.to_string()).collect();
    for id in state
        .cache
        .with(|c| c.iter().map(|m| m.id.clone()).collect::<Vec<_>>())
    {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The models whose files are here (bundled, downloaded, imported, opened): those a served
/// model can take its tokenizer from.
fn models_with_files(state: AppState) -> Vec<String> {
    let served: Vec<String> = state.cache.with(|c| {
        c.iter()
            .filter(|m| matches!(m.source, ModelSource::Server { .. }))
            .map(|m| m.id.clone())
            .collect()
    });
    model_ids(state)
        .into_iter()
        .filter(|id| !served.contains(id))
        .collect()
}

/// Reads the picked files and imports them as model `id`, then loads it.
fn import_files(state: AppState, id: String, list: FileList) {
    let files: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.item(i)).collect();
    spawn_local(async move {
        match import_local(&id, files).await {
            Ok(()) => engine::load_afresh(state, id, ModelSource::Local),
            Err(e) => state.error.set(Some(e.to_string())),
        }
    });
}

/// The desktop app's command that asks for a folder with the platform's dialog.
const PICK_FOLDER: &str = "pick_model_folder";

/// Asks the desktop app for a model folder and loads the model in it, read where it is.
fn open_folder(state: AppState) {
    spawn_local(async move {
        match tauri::invoke::<_, Option<String>>(PICK_FOLDER, &()).await {
            Ok(Some(path)) => engine::load_in_place(state, path, None),
            Ok(None) => {}
            Err(e) => state.error.set(Some(e)),
        }
    });
}

/// The desktop app's command that asks for a GGUF file with the platform's dialog.
const PICK_FILE: &str = "pick_model_file";

/// Asks the desktop app for a GGUF file and loads the model in it, read where it is.
fn open_file(state: AppState) {
    spawn_local(async move {
        match tauri::invoke::<_, Option<(String, String)>>(PICK_FILE, &()).await {
            Ok(Some((path, file))) => engine::load_in_place(state, path, Some(file)),
            Ok(None) => {}
            Err(e) => state.error.set(Some(e)),
        }
    });
}

/// The model picker, the ways to add a model, and the cache manager.
#[component]
pub fn ModelsPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let local_name = RwSignal::new("my-model".to_string());
    let url = RwSignal::new(String::new());
    let server = RwSignal::new(String::new());
    let served_name = RwSignal::new(String::new());
    let server_key = RwSignal::new(String::new());
    let server_tokenizer = RwSignal::new(state.settings.with_untracked(|s| s.model.clone()));
    let choose = move |id: String| {
        state.error.set(None);
        engine::load(state, &id, engine::source_of(state, &id));
        state.settings.update(|s| s.select_model(id));
    };
    let on_files = move |list: Option<FileList>| {
        if let Some(list) = list.filter(|l| l.length() > 0) {
            state.error.set(None);
            import_files(state, local_name.get_untracked(), list);
        }
    };
    let download = move || {
        state.error.set(None);
        match model_location(&url.get_untracked()) {
            Ok((base, file)) => {
                let id = file
                    .as_deref()
                    .map_or_else(|| id_for_base(&base), id_for_file);
                engine::load_afresh(state, id, ModelSource::Url { base, file });
            }
            Err(e) => state.error.set(Some(e.to_string())),
        }
    };
    let check = move || {
        state.error.set(None);
        state.check.set(None);
        match model_location(&url.get_untracked()) {
            Ok((base, file)) => {
                state.checking.set(true);
                engine::send(Request::Check {
                    source: ModelSource::Url { base, file },
                });
            }
            Err(e) => state.error.set(Some(e.to_string())),
        }
    };
    let connect = move || {
        state.error.set(None);
        match server_url(&server.get_untracked()) {
            Ok(url) => {
                let name = served_name.get_untracked();
                let model = Some(name.trim().to_string()).filter(|n| !n.is_empty());
                let key = server_key.get_untracked();
                let id = id_for_server(&url, model.as_deref());
                let source = ModelSource::Server {
                    url,
                    model,
                    tokenizer: server_tokenizer.get_untracked(),
                    api_key: Some(key.trim().to_string()).filter(|k| !k.is_empty()),
                };
                engine::load_afresh(state, id, source);
            }
            Err(e) => state.error.set(Some(e.to_string())),
        }
    };
    let cors_hint = move || {
        (!engine::is_desktop()).then(|| {
            view! {
                <p class="hint" data-testid="cors-hint">
                    "In the browser the server must allow this page's origin (CORS): llama-cpp-python and SGLang allow every origin, vLLM too unless started with --allowed-origins, llama.cpp's llama-server with --cors-origins in recent builds (see docs/scale-out.md). A page served over https reaches an http server only on this computer (localhost)."
                </p>
            }
        })
    };
    let recommended = RECOMMENDED
        .iter()
        .map(|r| {
            let location = r.location;
            view! {
                <li data-testid="recommended">
                    <span title=location>
                        {format!(
                            "{} · {} · {:.0}M parameters · ≈{}",
                            r.name,
                            r.format,
                            r.parameters as f64 / 1e6,
                            format_bytes(r.estimated_bytes),
                        )}
                    </span>
                    <button
                        title="ask the server for its size and header, and check that it fits here"
                        on:click=move |_| {
                            url.set(location.to_string());
                            check();
                        }
                    >
                        "Check"
                    </button>
                </li>
            }
        })
        .collect_view();
    let fit = move || {
        if state.checking.get() {
            return Some(view! { <p class="fit" data-testid="fit">"checking…"</p> }.into_any());
        }
        let c = state.check.get()?;
        let fmt = |b: Option<u64>| b.map_or("size unknown".into(), format_bytes);
        let what = format!(
            "{}: {} to download{}{}",
            c.location,
            fmt(c.download_bytes),
            c.parameters
                .map(|p| format!(", {:.1}M parameters", p as f64 / 1e6))
                .unwrap_or_default(),
            c.architecture
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
        );
        let fits = c.problems.is_empty();
        let lines = c
            .problems
            .iter()
            .chain(&c.notes)
            .map(|l| view! { <li>{l.clone()}</li> })
            .collect_view();
        Some(
            view! {
                <div class="fit" class:failed=!fits data-testid="fit" data-fits=fits.to_string()>
                    <p>{if fits { "fits: " } else { "does not fit: " }} {what}</p>
                    <ul>{lines}</ul>
                </div>
            }
            .into_any(),
        )
    };
    view! {
        <section class="panel models">
            <h2>"Model"</h2>
            <label>
                "Model "
                <select
                    data-testid="model-select"
                    on:change=move |ev| choose(event_target_value(&ev))
                    prop:value=move || state.settings.with(|s| s.model.clone())
                >
                    {move || {
                        model_ids(state)
                            .into_iter()
                            .map(|id| view! { <option value=id.clone()>{id.clone()}</option> })
                            .collect_view()
                    }}
                </select>
            </label>
            <span class="model-status" data-testid="model-status">
                {move || {
                    let id = state.settings.with(|s| s.model.clone());
                    state.loaded.with(|l| {
                        l.iter().find(|m| m.id == id).map(loaded_label).unwrap_or_else(|| "loading…".into())
                    })
                }}
            </span>
            {move || {
                state.progress.get().map(|(task, done, total)| {
                    let max = total.unwrap_or(0).max(done).max(1);
                    view! {
                        <div class="progress" data-testid="progress">
                            <progress max=max.to_string() value=done.to_string()></progress>
                            <span>{format!("{task} · {}", format_bytes(done))}</span>
                        </div>
                    }
                })
            }}
            <details>
                <summary>"Add a model"</summary>
                <Show
                    when=engine::is_desktop
                    fallback=move || {
                        view! {
                            <p class="hint">
                                "From files: pick or drop one GGUF file, or config.json, tokenizer.json and the *.safetensors file(s) (tokenizer_config.json optional). They stay in this browser."
                            </p>
                            <label>"Name " <input type="text" bind:value=local_name /></label>
                            <input
                                type="file"
                                multiple
                                data-testid="model-files"
                                on:change=move |ev| {
                                    let input: HtmlInputElement = event_target(&ev);
                                    on_files(input.files());
                                }
                            />
                            <div
                                class="drop"
                                on:dragover=move |ev| ev.prevent_default()
                                on:drop=move |ev| {
                                    ev.prevent_default();
                                    on_files(ev.data_transfer().and_then(|d| d.files()));
                                }
                            >
                                "or drop the files here"
                            </div>
                        }
                    }
                >
                    <p class="hint">
                        "From this computer: a GGUF file, or a folder holding config.json, tokenizer.json and the *.safetensors file(s). Read where it is."
                    </p>
                    <button data-testid="open-file" on:click=move |_| open_file(state)>
                        "Open a GGUF file…"
                    </button>
                    <button data-testid="open-folder" on:click=move |_| open_folder(state)>
                        "Open a model folder…"
                    </button>
                </Show>
                <p class="hint">
                    "From a URL: a Hugging Face repository (org/name or its URL), one GGUF file in one (org/name/file.gguf) or any URL of a .gguf file or of a folder serving a repository's files. Downloaded once, then cached."
                </p>
                <input
                    type="url"
                    placeholder="HuggingFaceTB/SmolLM2-135M"
                    data-testid="model-url"
                    bind:value=url
                />
                <button on:click=move |_| download()>"Download"</button>
                <button data-testid="check" on:click=move |_| check()>"Check"</button>
                {fit}
                <p class="hint">
                    "Recommended (Check asks the server for the real size and the file's header, and whether it loads and fits here, before anything downloads):"
                </p>
                <ul class="recommended">{recommended}</ul>
                <p class="hint">
                    "From an inference server (vLLM, SGLang, llama.cpp's llama-server, llama-cpp-python): its OpenAI-compatible address. The model runs there; this app sends each block as a completion request and keeps the texts, tokenized with the tokenizer of a model here that shares it. Sampling, Best-of-N, majority, the particle filter and ETS run over it; beam search, ETS-IS and the self-certainty rewards need logits a server does not send."
                </p>
                {cors_hint}
                <input
                    type="url"
                    placeholder="http://127.0.0.1:8000/v1"
                    data-testid="server-url"
                    bind:value=server
                />
                <input
                    type="text"
                    placeholder="model name on the server (default: its first)"
                    data-testid="server-model"
                    bind:value=served_name
                />
                <input
                    type="password"
                    placeholder="API key (optional; kept until the app closes)"
                    data-testid="server-key"
                    bind:value=server_key
                />
                <label>
                    "Tokenizer of "
                    <select
                        data-testid="server-tokenizer"
                        on:change=move |ev| server_tokenizer.set(event_target_value(&ev))
                        prop:value=move || server_tokenizer.get()
                    >
                        {move || {
                            models_with_files(state)
                                .into_iter()
                                .map(|id| view! { <option value=id.clone()>{id.clone()}</option> })
                                .collect_view()
                        }}
                    </select>
                </label>
                <button data-testid="server-connect" on:click=move |_| connect()>"Connect"</button>
            </details>
            <details>
                <summary>"Cached models"</summary>
                <ul class="cache" data-testid="cache-list">
                    {move || {
                        state
                            .cache
                            .get()
                            .into_iter()
                            .map(|m| {
                                let id = m.id.clone();
                                // A folder opened in place is only forgotten, never deleted.
                                let (action, hint) = match &m.source {
                                    ModelSource::Folder { path, .. } => ("Forget", format!("read from {path}")),
                                    ModelSource::Server { url, .. } => ("Forget", format!("served by {url}")),
                                    _ => ("Delete", "delete its files".to_string()),
                                };
                                view! {
                                    <li>
                                        {format!("{} · {}", m.id, format_bytes(m.bytes()))}
                                        <button title=hint on:click=move |_| {
                                            engine::send(ets_protocol::Request::DeleteCached {
                                                id: id.clone(),
                                            })
                                        }>{action}</button>
                                    </li>
                                }
                            })
                            .collect_view()
                    }}
                </ul>
            </details>
        </section>
    }
}
